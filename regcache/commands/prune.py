"""`regcache prune [--older-than 30d] [--max-size 50G] [--dry-run]`: make room.

Each item (tag, manifest, blob) has a keep time: the latest use of itself and of everything that
refers to it, so a blob stays as long as any manifest that names it, and a manifest as long as
any tag pointing to it. First everything whose keep time is older than --older-than goes; then,
while the cache is over --max-size, the least recently kept, tags before the manifests and blobs
they need. Never touched: downloads in progress (`staging/`, not objects yet), objects pending
upload to S3 and what they need, files that are not regcache's. An item used after the listing
(a hit refreshes its last use) is kept, with what it needs. In S3 mode the bucket's last use is
the upload time, or this replica's last local hit if that is later.
"""

from __future__ import annotations

import argparse
import re
import time
from dataclasses import dataclass

from regcache.commands.common import CommandError, command_parser, open_tiers, run_command
from regcache.commands.inventory import LEVEL, Inventory, Item, scan
from regcache.commands.output import ago, human_size, iso, print_json, span, table
from regcache.commands.removal import Outcome, item_json, item_name, remove
from regcache.config import Settings, parse_duration, parse_size
from regcache.errors import ConfigError
from regcache.storage.base import LAST_USE_RESOLUTION


def main(argv: list[str]) -> int:
    parser = command_parser("prune", "Remove what was not used for a while, then the least recently used.")
    parser.add_argument("--older-than", metavar="DURATION", help="remove what was not used for this long (30d, 12h)")
    parser.add_argument("--max-size", metavar="SIZE", help="then remove least recently used until under (50G)")
    parser.add_argument("--dry-run", action="store_true", help="show what would go, remove nothing")
    return run_command("prune", parser, argv, _prune)


@dataclass(frozen=True)
class Victim:
    item: Item
    kept_until: float  # its keep time
    why: str


def plan(inventory: Inventory, now: float, older_than: float | None, max_size: int | None) -> list[Victim]:
    keep = inventory.keep_times(now, LAST_USE_RESOLUTION)
    pending = [id for id, item in inventory.items.items() if any(o.key in inventory.pending for o in item.objects)]
    protected = inventory.reachable(pending)
    # Last use is recorded to the hour: within one, an image's items go together.
    order = sorted(
        (item for item in inventory.items.values() if item.id not in protected),
        key=lambda i: (keep[i.id].time // LAST_USE_RESOLUTION, -keep[i.id].group, LEVEL[i.kind], i.id),
    )
    chosen: list[Victim] = []
    if older_than is not None:
        cutoff = now - older_than
        for item in order:
            if keep[item.id].time < cutoff:
                chosen.append(Victim(item, keep[item.id].time, f"unused for {span(now - keep[item.id].time)}"))
    if max_size is not None:
        gone = {v.item.id for v in chosen}
        total = sum(item.size for item in inventory.items.values() if item.id not in gone)
        for item in order:
            if total <= max_size:
                break
            if item.id not in gone:
                chosen.append(Victim(item, keep[item.id].time, "least recently used"))
                total -= item.size
    return chosen


def parse_age(text: str) -> float:
    """Seconds from `30d`, `12h`, `90m` (days on top of what --tag-ttl takes)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*d\s*", text)
    if match:
        return float(match.group(1)) * 86400
    try:
        return parse_duration("--older-than", text)
    except ConfigError:
        raise ConfigError(f"--older-than {text!r}: expected an age such as 30d, 12h or 90m") from None


async def _prune(args: argparse.Namespace, settings: Settings) -> int:
    if args.older_than is None and args.max_size is None:
        raise CommandError("say what to remove: --older-than DURATION and/or --max-size SIZE")
    older_than = parse_age(args.older_than) if args.older_than else None
    max_size = parse_size("--max-size", args.max_size) if args.max_size else None
    now = time.time()
    async with open_tiers(settings) as tiers:
        inventory = await scan(tiers)
        victims = plan(inventory, now, older_than, max_size)
        items = [v.item for v in victims]
        outcome = Outcome(removed=items) if args.dry_run else await remove(tiers, inventory, items, True)
    before = sum(item.size for item in inventory.items.values())
    after = before - outcome.freed
    why = {v.item.id: v for v in victims}
    if args.json:
        print_json(
            {
                "dry_run": args.dry_run,
                "removed": [_as_json(why[i.id]) for i in outcome.removed],
                "kept": [{**_as_json(why[i.id]), "kept_because": reason} for i, reason in outcome.kept],
                "failed": [{**_as_json(why[i.id]), "error": error} for i, error in outcome.failed],
                "size_before": before,
                "size_after": after,
            }
        )
        return 1 if outcome.failed else 0
    verb = "would remove" if args.dry_run else "removed"
    rows = [_row(verb, why[i.id], now) for i in outcome.removed]
    rows += [_row("kept", why[i.id], now, reason) for i, reason in outcome.kept]
    rows += [_row("FAILED", why[i.id], now, error) for i, error in outcome.failed]
    if rows:
        print(table(["", "KIND", "NAME", "SIZE", "LAST USE", "WHY"], rows, right=[3]))
    print(
        f"{outcome.freed_words(args.dry_run)}; the cache {'would hold' if args.dry_run else 'holds'} {human_size(after)}"
        + (f" (limit {human_size(max_size)})" if max_size is not None else "")
        + "."
    )
    if max_size is not None and after > max_size:
        print("Still over the limit: what is left is pending upload to S3 or needed by it.")
    return 1 if outcome.failed else 0


def _row(verb: str, victim: Victim, now: float, note: str | None = None) -> list[str]:
    item = victim.item
    return [verb, item.kind, item_name(item), human_size(item.size), ago(victim.kept_until, now), note or victim.why]


def _as_json(victim: Victim) -> dict[str, object]:
    return item_json(victim.item, last_use=iso(victim.kept_until), why=victim.why)
