"""`regcache rm <registry>/<repository>[:<tag>|@<digest>]`: forget tags and manifests.

Without a tag or digest every tag of the repository goes; `@digest` forgets the repository's
tags that point to it and the manifest itself. Then whatever only the forgotten tags reached goes
too, at once: the manifests (an index and its platforms' manifests) and the blobs no kept
manifest names. A manifest or blob that another tag, or a manifest kept by digest, still needs
stays (and is reported). Other content (unreferenced blobs, old untagged manifests) is left to
`prune`. In S3 mode the objects go from this replica's disk and from the bucket; other replicas
keep their local copies until they evict them.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from regcache.commands.common import CommandError, command_parser, open_tiers, run_command
from regcache.commands.inventory import LEVEL, Inventory, Item, scan
from regcache.commands.output import human_size, print_json, table
from regcache.commands.removal import Outcome, item_json, item_name, remove
from regcache.config import Settings
from regcache.errors import BadRequest
from regcache.oci.digest import Digest
from regcache.oci.reference import is_tag, names_registry, parse_registry, parse_repo
from regcache.storage.base import manifest_key

USAGE = "<registry>/<repository>[:<tag>|@<digest>], e.g. docker.io/library/alpine:3.19"


def main(argv: list[str]) -> int:
    parser = command_parser("rm", "Forget cached tags and manifests, and the blobs only they needed.")
    parser.add_argument("reference", help=USAGE)
    parser.add_argument("--dry-run", action="store_true", help="show what would go, remove nothing")
    return run_command("rm", parser, argv, _rm)


@dataclass(frozen=True)
class Target:
    registry: str
    repo: str
    tag: str | None = None
    digest: Digest | None = None


def parse_target(text: str) -> Target:
    """A CommandError naming what is wrong with the reference."""
    name, at, digest_text = text.strip().partition("@")
    registry, slash, rest = name.partition("/")
    if not slash or not rest or not names_registry(registry):
        raise CommandError(f"{text!r}: expected {USAGE}")
    tag = None
    if ":" in rest.rsplit("/", 1)[-1]:
        rest, _, tag = rest.rpartition(":")
    try:
        registry = parse_registry(registry)
        repo = parse_repo(rest)
        digest = Digest.parse(digest_text) if at else None
    except BadRequest as exc:
        raise CommandError(f"{text!r}: {exc.message}") from None
    if tag is not None and not is_tag(tag):
        raise CommandError(f"{text!r}: invalid tag {tag!r}")
    if tag is not None and digest is not None:
        raise CommandError(f"{text!r}: give a tag or a digest, not both")
    return Target(registry, repo, tag, digest)


def plan(inventory: Inventory, target: Target) -> tuple[list[Item], list[tuple[Item, list[str]]]]:
    """What goes, and the named manifests that stay with the tags that still need them."""
    tags = [
        t
        for t in inventory.of_kind("tag")
        if (t.registry, t.repo) == (target.registry, target.repo)
        and (target.tag is None or t.tag == target.tag)
        and (target.digest is None or t.digest == target.digest)
    ]
    seeds = [manifest_key(t.digest) for t in tags if t.digest is not None]
    if target.digest is not None:
        seeds.append(manifest_key(target.digest))
    candidates = inventory.reachable(seeds)
    forgotten = {t.id for t in tags}
    roots = [
        id
        for id, item in inventory.items.items()
        if (item.kind == "tag" and id not in forgotten) or (item.kind == "manifest" and id not in candidates)
    ]
    needed = inventory.reachable(roots)
    going = sorted(tags + [inventory.items[id] for id in candidates - needed], key=lambda i: (LEVEL[i.kind], i.id))
    kept = []
    for seed in dict.fromkeys(seeds):
        if seed in needed:
            users = [
                t.label
                for t in inventory.of_kind("tag")
                if t.id not in forgotten and seed in inventory.reachable([t.id])
            ]
            kept.append((inventory.items[seed], users))
    return going, kept


async def _rm(args: argparse.Namespace, settings: Settings) -> int:
    target = parse_target(args.reference)
    async with open_tiers(settings) as tiers:
        inventory = await scan(tiers)
        going, kept = plan(inventory, target)
        if not going and not kept:
            print(f"regcache rm: nothing cached for {args.reference}", file=sys.stderr)
            return 1
        outcome = Outcome(removed=going) if args.dry_run else await remove(tiers, inventory, going, False)
    if args.json:
        print_json(
            {
                "dry_run": args.dry_run,
                "removed": [item_json(item) for item in outcome.removed],
                "kept": [{**item_json(item), "needed_by": users} for item, users in kept],
                "failed": [{**item_json(item), "error": why} for item, why in outcome.failed],
                "freed": outcome.freed,
            }
        )
        return 1 if outcome.failed else 0
    verb = "would remove" if args.dry_run else "removed"
    rows = [[verb, item.kind, item_name(item), human_size(item.size)] for item in outcome.removed]
    rows += [
        ["kept", item.kind, item_name(item), f"needed by {', '.join(users) or 'a kept manifest'}"]
        for item, users in kept
    ]
    rows += [["FAILED", item.kind, item_name(item), why] for item, why in outcome.failed]
    print(table(["", "KIND", "NAME", "SIZE"], rows))
    print(outcome.freed_words(args.dry_run) + ".")
    return 1 if outcome.failed else 0
