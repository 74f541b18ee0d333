"""`regcache du`: bytes and objects by tier, and by registry.

Blobs are stored once, by digest, whatever registry they came from, so "by registry" is an
attribution: a registry's row counts everything its tags reach (tag pointers, manifests, the
blobs they name); a blob that tags of several registries reach counts in each of those rows, and
SHARED says how much of a row that is, so the rows may add up to more than the tier holds.
Manifests no tag reaches (pulled by digest, or by a --skip-tags tag) and what only they need are
"untagged"; blobs no stored manifest names are "unreferenced" (a --private-registry's blobs, or
what an `rm` or an expired tag left; `prune` takes them first when they are old).
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass

from regcache.commands.common import Tiers, command_parser, open_tiers, run_command
from regcache.commands.inventory import Inventory, scan
from regcache.commands.output import human_size, print_json, table
from regcache.config import Settings

UNTAGGED = "(untagged)"
UNREFERENCED = "(unreferenced)"


def main(argv: list[str]) -> int:
    parser = command_parser("du", "Bytes and objects in the cache, by tier and by registry.")
    return run_command("du", parser, argv, _du)


@dataclass
class Usage:
    name: str
    tags: int = 0
    manifests: int = 0
    blobs: int = 0
    size: int = 0
    shared: int = 0  # bytes of blobs that another registry's tags reach too


async def _du(args: argparse.Namespace, settings: Settings) -> int:
    async with open_tiers(settings) as tiers:
        inventory = await scan(tiers)
    by_tier = tier_usage(inventory, tiers)
    by_registry = registry_usage(inventory)
    if args.json:
        print_json(
            {
                "tiers": [{"tier": t, "kind": k, "objects": n, "size": s} for t, k, n, s in by_tier],
                "registries": [vars(u) for u in by_registry],
            }
        )
        return 0
    print(table(["TIER", "KIND", "OBJECTS", "SIZE"], [[t, k, str(n), human_size(s)] for t, k, n, s in by_tier], [2, 3]))
    print()
    rows = [
        [u.name, str(u.tags), str(u.manifests), str(u.blobs), human_size(u.size), human_size(u.shared)]
        for u in by_registry
    ]
    print(table(["REGISTRY", "TAGS", "MANIFESTS", "BLOBS", "SIZE", "SHARED"], rows, [1, 2, 3, 4, 5]))
    print(
        "A blob counts under every registry whose tags reach it (SHARED: the part of a row other registries reach too)."
    )
    return 0


def tier_usage(inventory: Inventory, tiers: Tiers) -> list[tuple[str, str, int, int]]:
    """(tier, kind, objects, bytes), a total line per tier."""
    objects_of: Counter[tuple[str, str]] = Counter()  # by (tier, kind)
    bytes_of: Counter[tuple[str, str]] = Counter()
    objects = [(f"{item.kind}s", obj) for item in inventory.items.values() for obj in item.objects]
    objects += [("other", obj) for obj in inventory.strays]
    for kind, obj in objects:
        if kind == "blobs" and obj.key.startswith("private/"):
            kind = "private blobs"
        for tier in obj.tiers:
            for key in ((tier, kind), (tier, "total")):
                objects_of[key] += 1
                bytes_of[key] += obj.size
    order = ["tags", "manifests", "blobs", "private blobs", "other", "total"]
    rows = []
    for tier in tiers.all:
        for kind in order:
            if (tier.name, kind) in objects_of or kind == "total":
                rows.append((tier.name, kind, objects_of[tier.name, kind], bytes_of[tier.name, kind]))
    return rows


def registry_usage(inventory: Inventory) -> list[Usage]:
    """One row per registry, then what no tag reaches and what no manifest names."""
    by_registry: dict[str, set[str]] = {}
    for tag in inventory.of_kind("tag"):
        assert tag.registry is not None
        by_registry.setdefault(tag.registry, set()).update(inventory.reachable([tag.id]))
    for blob in inventory.of_kind("blob"):
        if blob.registry is not None:
            by_registry.setdefault(blob.registry, set()).add(blob.id)
    # How many registries reach each item: a blob that more than one reaches is SHARED.
    registries = Counter(id for ids in by_registry.values() for id in ids)
    rows: dict[str, Usage] = {}
    reached: set[str] = set()
    for registry, ids in sorted(by_registry.items()):
        rows[registry] = _count(inventory, registry, ids, registries)
        reached |= ids
    untagged_roots = [m.id for m in inventory.of_kind("manifest") if m.id not in reached]
    untagged = inventory.reachable(untagged_roots) - reached
    rows[UNTAGGED] = _count(inventory, UNTAGGED, untagged, registries)
    reached |= untagged
    unreferenced = {id for id, item in inventory.items.items() if id not in reached}
    rows[UNREFERENCED] = _count(inventory, UNREFERENCED, unreferenced, registries)
    return list(rows.values())


def _count(inventory: Inventory, name: str, ids: set[str], registries: Counter[str]) -> Usage:
    usage = Usage(name)
    for id in ids:
        item = inventory.items[id]
        usage.size += item.size
        if item.kind == "tag":
            usage.tags += 1
        elif item.kind == "manifest":
            usage.manifests += 1
        else:
            usage.blobs += 1
            if registries[id] > 1:
                usage.shared += item.size
    return usage
