"""Removing items from every tier that holds them, safely under a running server.

Tags go first, then manifests, then blobs, so a tag never points at a missing manifest and no
kept manifest loses a blob midway. Each object is unlinked (disk) or deleted (S3) by key: a
reader that has a file open keeps its bytes, and the next request for it is a miss. Directories
stay (the server's commit creates them and renames into them; removing one under it would fail a
commit). With `unless_used_since`, an item whose object was used (or replaced) after the listing
is kept, and with it everything it refers to.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from regcache.commands.common import Tiers
from regcache.commands.inventory import LEVEL, Inventory, Item
from regcache.commands.output import count, human_size, short_digest
from regcache.storage.base import TierUnavailable

# A refreshed mtime is at least this much later than the listed one (filesystem timestamps of a
# copy or a replace can differ by rounding).
_USED_SINCE = 1.0


@dataclass
class Outcome:
    removed: list[Item] = field(default_factory=list)
    kept: list[tuple[Item, str]] = field(default_factory=list)  # with why
    failed: list[tuple[Item, str]] = field(default_factory=list)

    @property
    def freed(self) -> int:
        return sum(item.size for item in self.removed)

    def freed_words(self, dry_run: bool) -> str:
        """Freed 1.2 GiB (1 tag, 2 manifests, 9 blobs)."""
        kinds = ", ".join(count(sum(1 for i in self.removed if i.kind == k), k) for k in ("tag", "manifest", "blob"))
        return f"{'Would free' if dry_run else 'Freed'} {human_size(self.freed)} ({kinds})"


def item_name(item: Item) -> str:
    """What the table shows: a tag's name, the short digest of anything else."""
    return item.label if item.kind == "tag" else short_digest(item.digest)


def item_json(item: Item, **extra: object) -> dict[str, object]:
    """What --json says of an item; `extra` comes before its tiers."""
    return {
        "kind": item.kind,
        "name": item.label,
        "key": item.id,
        "size": item.size,
        **extra,
        "tiers": list(item.tiers),
    }


async def remove(tiers: Tiers, inventory: Inventory, items: list[Item], unless_used_since: bool) -> Outcome:
    outcome = Outcome()
    protected: set[str] = set()
    for item in sorted(items, key=lambda i: LEVEL[i.kind]):
        if item.id in protected:
            outcome.kept.append((item, "needed by something used since the listing"))
            continue
        if unless_used_since and await _used_since(tiers, item):
            outcome.kept.append((item, "used since the listing"))
            protected |= inventory.reachable([item.id])
            continue
        try:
            for obj in item.objects:  # a manifest's bytes before its metadata
                for tier_name in obj.tiers:
                    await tiers.named(tier_name).delete(obj.key)
        except (TierUnavailable, OSError) as exc:
            outcome.failed.append((item, str(exc)))
            protected |= inventory.reachable([item.id])
            continue
        outcome.removed.append(item)
    return outcome


async def _used_since(tiers: Tiers, item: Item) -> bool:
    for obj in item.objects:
        for tier_name, listed in obj.seen:
            now = await tiers.named(tier_name).stat(obj.key)
            if now is None or listed is None or now.modified is None:
                continue
            if now.modified > listed + _USED_SINCE:
                return True
    return False
