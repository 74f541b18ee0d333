"""`regcache ls [PREFIX]`: what is cached, one line per tag (and per manifest no tag reaches).

SIZE is what the cache holds for the image: its manifests and the blobs they name that are
cached (a blob shared by several images counts in each). LAST USE is the tag's (or untagged
manifest's) last use; see disk.py for how hits record it.
"""

from __future__ import annotations

import argparse
import time

from regcache.commands.common import Tiers, command_parser, open_tiers, run_command
from regcache.commands.inventory import Inventory, Item, scan
from regcache.commands.output import ago, count, human_size, iso, print_json, short_digest, table
from regcache.config import Settings


def main(argv: list[str]) -> int:
    parser = command_parser("ls", "List what the cache holds: registry, repository, tag, digest, size, last use.")
    parser.add_argument(
        "prefix", nargs="?", default="", help="only <registry>[/<repository prefix>], e.g. docker.io/library"
    )
    parser.add_argument("--no-trunc", action="store_true", help="show whole digests")
    return run_command("ls", parser, argv, _ls)


async def _ls(args: argparse.Namespace, settings: Settings) -> int:
    async with open_tiers(settings) as tiers:
        inventory = await scan(tiers)
    rows = listing(inventory, args.prefix)
    if args.json:
        print_json([_as_json(inventory, row) for row in rows])
        return 0
    _print_table(inventory, tiers, rows, args.no_trunc)
    return 0


def listing(inventory: Inventory, prefix: str) -> list[Item]:
    """Tags under the prefix, by name; then (without a prefix) the manifests no tag reaches."""
    prefix = prefix.strip().rstrip("/")
    tags = [tag for tag in inventory.of_kind("tag") if matches(tag, prefix)]
    tags.sort(key=lambda t: (t.registry or "", t.repo or "", t.tag or ""))
    if prefix:
        return tags
    tagged = inventory.reachable(tag.id for tag in inventory.of_kind("tag"))
    manifests = [m for m in inventory.of_kind("manifest") if m.id not in tagged]
    # An index's entries are listed under it, not as untagged manifests of their own.
    listed_by_index = inventory.reachable(r for m in manifests for r in m.refers_to)
    untagged = [m for m in manifests if m.id not in listed_by_index]
    untagged.sort(key=lambda m: -m.last_use)
    return tags + untagged


def matches(tag: Item, prefix: str) -> bool:
    """A registry alone matches exactly (docker.io is not docker.io.example.com); with a path,
    any repository that starts with it (docker.io/library/al)."""
    if not prefix:
        return True
    if "/" not in prefix:
        return tag.registry == prefix.lower()
    return f"{tag.registry}/{tag.repo}".startswith(prefix)


def image_size(inventory: Inventory, row: Item) -> tuple[int, int]:
    """(bytes, objects) the cache holds for a tag or manifest and everything it reaches."""
    reached = [inventory.items[id] for id in inventory.reachable([row.id])]
    return sum(item.size for item in reached), sum(len(item.objects) for item in reached)


def _print_table(inventory: Inventory, tiers: Tiers, rows: list[Item], full: bool) -> None:
    now = time.time()
    shared = len(tiers.all) > 1  # a bucket behind the disk
    headers = ["REGISTRY", "REPOSITORY", "TAG", "DIGEST", "SIZE", "LAST USE"] + (["TIERS"] if shared else [])
    lines = []
    for row in rows:
        size, _ = image_size(inventory, row)
        cells = [
            row.registry or "-",
            row.repo or "-",
            row.tag or "(untagged)",
            short_digest(row.digest, full),
            human_size(size),
            ago(row.last_use, now),
        ]
        lines.append(cells + (["+".join(row.tiers)] if shared else []))
    print(table(headers, lines, right=[4]))
    untagged = sum(1 for row in rows if row.kind == "manifest")
    print(count(len(rows) - untagged, "tag") + (f", {count(untagged, 'untagged manifest')}" if untagged else ""))


def _as_json(inventory: Inventory, row: Item) -> dict[str, object]:
    size, objects = image_size(inventory, row)
    return {
        "registry": row.registry,
        "repository": row.repo,
        "tag": row.tag,
        "digest": str(row.digest) if row.digest else None,
        "media_type": row.media_type,
        "size": size,
        "objects": objects,
        "last_use": iso(row.last_use),
        "tiers": list(row.tiers),
    }
