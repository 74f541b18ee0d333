"""What the cache holds, as the operator's commands see it: tags, manifests, blobs, what refers to
what, and when each was last used.

Every tier is listed once (`Tier.entries`); an object held by several tiers is one `Stored` whose
last use is the latest any tier records. Tag pointers and manifests are read (manifests parsed with
`oci.manifest`) to know what refers to what: tag → manifest → an index's manifests → config and
layers. Blobs are shared by every manifest that names their digest, whatever its registry.

An object's keep time is the latest use of itself and of everything that refers to it, directly
or not, so a blob is kept as long as any manifest that needs it is, and a manifest as long as any
tag pointing to it. An object pending upload to S3 counts as used now. `prune` removes by keep
time; `rm` removes what only the forgotten tags reached.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field

from regcache.commands.common import Tiers
from regcache.oci.digest import Digest
from regcache.oci.manifest import UNREADABLE, References, json_object, references
from regcache.oci.mediatypes import OCTET_STREAM
from regcache.storage.base import ObjectInfo, blob_key, manifest_key

CONTENT_PREFIXES = ("tags/", "manifests/", "blobs/", "private/")
# Removal order: what refers first, what is referred to last (a tag never points at nothing).
LEVEL = {"tag": 0, "manifest": 1, "blob": 2}
_READS_AT_ONCE = 16


@dataclass(frozen=True)
class Stored:
    """One object, over the tiers that hold it."""

    key: str
    size: int
    last_use: float
    tiers: tuple[str, ...]
    # The last use each tier recorded, to tell whether it was used (or replaced) since.
    seen: tuple[tuple[str, float | None], ...] = ()


@dataclass(frozen=True)
class Item:
    """Something a command lists or removes whole: a tag pointer, a manifest (with its metadata),
    or a blob."""

    kind: str  # tag, manifest, blob
    id: str  # its main key
    objects: tuple[Stored, ...]
    label: str  # what a user reads: registry/repository:tag, or the digest
    refers_to: tuple[str, ...] = ()  # ids of the items it needs
    registry: str | None = None  # a tag's registry, a private blob's
    repo: str | None = None
    tag: str | None = None
    digest: Digest | None = None
    media_type: str | None = None

    @property
    def size(self) -> int:
        return sum(o.size for o in self.objects)

    @property
    def last_use(self) -> float:
        return max(o.last_use for o in self.objects)

    @property
    def tiers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(t for o in self.objects for t in o.tiers))


@dataclass
class Inventory:
    items: dict[str, Item]
    pending: frozenset[str]
    # Keys under the content prefixes that name nothing regcache stores (left alone).
    strays: list[Stored] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[Item]:
        return [item for item in self.items.values() if item.kind == kind]

    def reachable(self, roots: Iterable[str]) -> set[str]:
        """The ids of the roots and of everything they refer to, directly or not."""
        return set(self._claim([r for r in roots if r in self.items]))

    def keep_times(self, now: float, resolution: float = 1.0) -> dict[str, Keep]:
        """Each item's keep time, the latest use of itself and of whatever refers to it (items
        pending upload count as used `now`), and its group for ordering removals within a
        `resolution` (see Keep)."""
        own = {
            id: now if any(o.key in self.pending for o in item.objects) else item.last_use
            for id, item in self.items.items()
        }
        # Latest first: the first walk to reach an item brings the latest use.
        by_time = sorted(own, key=lambda id: -own[id])
        latest = self._claim(by_time)
        # Per `resolution`, tags first (the latest first): an image's items share its tag's group.
        grouped = self._claim(
            sorted(own, key=lambda id: (-(own[id] // resolution), LEVEL[self.items[id].kind], -own[id], id))
        )
        return {id: Keep(own[by_time[seq]], grouped[id]) for id, seq in latest.items()}

    def _claim(self, roots: list[str]) -> dict[str, int]:
        """Walk from each root in turn; each item goes to the first walk that reaches it (as the
        index of that root in `roots`)."""
        claimed: dict[str, int] = {}
        for seq, root in enumerate(roots):
            stack = [root]
            while stack:
                current = stack.pop()
                if current in claimed:
                    continue
                claimed[current] = seq
                stack.extend(r for r in self.items[current].refers_to if r in self.items and r not in claimed)
        return claimed


@dataclass(frozen=True)
class Keep:
    """When an item was last needed, and its group: removing in order of (time // resolution,
    -group, LEVEL) takes an image's items together and never an item before what refers to it."""

    time: float
    group: int


def tag_parts(key: str) -> tuple[str, str, str] | None:
    """(registry, repository, tag) of `tags/<registry>/<repository>/<tag>.json`."""
    parts = key.removeprefix("tags/").removesuffix(".json").split("/")
    if not key.startswith("tags/") or not key.endswith(".json") or len(parts) < 3:
        return None
    return parts[0], "/".join(parts[1:-1]), parts[-1]


def content_digest(key: str, top: str) -> Digest | None:
    """The digest of `<top>/sha256/ab/<hex>`, if the key is one (and its digest valid)."""
    parts = key.split("/")
    if len(parts) != 4 or parts[0] != top or parts[2] != parts[3][:2]:
        return None
    digest = Digest.parse_or_none(f"{parts[1]}:{parts[3]}")
    return digest if digest is not None and digest.verifiable else None


async def scan(tiers: Tiers) -> Inventory:
    """List every tier, read the tag pointers and manifests, and link what refers to what."""
    listed: dict[str, list[tuple[str, ObjectInfo]]] = {}
    for tier in tiers.all:
        for prefix in CONTENT_PREFIXES:
            async for info in tier.entries(prefix):
                listed.setdefault(info.key, []).append((tier.name, info))
    stored = {key: _merged(key, found) for key, found in listed.items()}

    items: dict[str, Item] = {}
    strays: list[Stored] = []
    manifests = {key: digest for key in stored if (digest := content_digest(key, "manifests")) is not None}
    tags = {key: parts for key in stored if (parts := tag_parts(key)) is not None}
    metas = [k + ".json" for k in manifests if k + ".json" in stored]
    read = await _read_all(tiers, [*manifests, *metas, *tags])
    for key, digest in manifests.items():
        body = read.get(key)
        refs: References = references(body) if body is not None else UNREADABLE
        meta = json_object(read.get(key + ".json"))
        children = [manifest_key(d) for d in refs.manifests] + [blob_key(d) for d in refs.blobs]
        objects = (stored[key],) + ((stored[key + ".json"],) if key + ".json" in stored else ())
        media_type = str(meta.get("media_type") or OCTET_STREAM) if meta else OCTET_STREAM
        items[key] = Item("manifest", key, objects, str(digest), tuple(children), digest=digest, media_type=media_type)

    for key, (registry, repo, tag) in tags.items():
        pointer = json_object(read.get(key)) or {}
        digest = Digest.parse_or_none(pointer.get("digest"))  # None: a torn or foreign pointer reaches nothing
        refers = (manifest_key(digest),) if digest is not None else ()
        media_type = str(pointer.get("media_type") or OCTET_STREAM)
        label = f"{registry}/{repo}:{tag}"
        items[key] = Item("tag", key, (stored[key],), label, refers, registry, repo, tag, digest, media_type)

    claimed = {obj.key for item in items.values() for obj in item.objects}
    for key, obj in stored.items():
        if key in claimed:
            continue
        registry, rest = None, key
        if key.startswith("private/"):
            registry, _, rest = key.removeprefix("private/").partition("/")
        digest = content_digest(rest, "blobs")
        if digest is None:
            strays.append(obj)  # not something regcache stores: left alone
            continue
        items[key] = Item("blob", key, (obj,), str(digest), registry=registry, digest=digest)
    return Inventory(items, tiers.pending, strays)


def _merged(key: str, found: list[tuple[str, ObjectInfo]]) -> Stored:
    times = [info.modified for _, info in found if info.modified is not None]
    return Stored(
        key,
        found[0][1].size,
        max(times) if times else 0.0,
        tuple(name for name, _ in found),
        tuple((name, info.modified) for name, info in found),
    )


async def _read_all(tiers: Tiers, keys: list[str]) -> dict[str, bytes]:
    """Small objects read from the first tier that has them, a few at once (S3 round trips)."""
    slots = asyncio.Semaphore(_READS_AT_ONCE)

    async def read(key: str) -> bytes | None:
        async with slots:
            for tier in tiers.all:
                data = await tier.read_small(key)
                if data is not None:
                    return data
        return None

    found = await asyncio.gather(*(read(key) for key in keys))
    return {key: data for key, data in zip(keys, found, strict=True) if data is not None}
