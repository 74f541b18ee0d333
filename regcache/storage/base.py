"""The key layout shared by every tier, and the Protocol a tier implements.

```
blobs/sha256/ab/abcdef…                 blob bytes
manifests/sha256/ab/abcdef…             manifest bytes
manifests/sha256/ab/abcdef….json        {"media_type": …, "size": …}
tags/<registry>/<repository>/<tag>.json {"digest": …, "media_type": …, "size": …, "fetched_at": …}
lists/<registry>/<repository>/_tags/<sha256 of the query>.json       the last good tags/list page
lists/<registry>/<repository>/_referrers/<sha256 of digest+query>.json  the last good referrers
private/<registry>/blobs/sha256/ab/abcdef…  blob bytes from a --private-registry
staging/…                               in-flight downloads (disk only; emptied at start-up)
uploads/<sha256 of key>                 S3 mode: a committed object not yet uploaded (disk only;
                                        resumed at start-up)
```
Every name in a key was validated by `oci.reference` (no "..", no leading dot), so a key is a
relative path that stays inside the tier.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from regcache.oci.digest import Digest
from regcache.oci.mediatypes import OCTET_STREAM

# The most a ByteSource yields at once: 1 MiB chunks beat both 256 KiB and 4 MiB (STYLE.md).
CHUNK = 1024 * 1024
# A hit refreshes a stored file's last use at most this often (seconds): one utime per object
# per hour keeps the hot path a stat, and is precise enough for `regcache prune --older-than`.
LAST_USE_RESOLUTION = 3600.0


def blob_key(digest: Digest) -> str:
    return f"blobs/{digest.algorithm}/{digest.encoded[:2]}/{digest.encoded}"


def private_blob_key(registry: str, digest: Digest) -> str:
    """A private registry's blob, kept apart so that a public pull of the same digest neither
    gets it nor learns that the cache holds it."""
    return f"private/{registry}/{blob_key(digest)}"


def manifest_key(digest: Digest) -> str:
    return f"manifests/{digest.algorithm}/{digest.encoded[:2]}/{digest.encoded}"


def manifest_meta_key(digest: Digest) -> str:
    return manifest_key(digest) + ".json"


def tag_key(registry: str, repo: str, tag: str) -> str:
    return f"tags/{registry}/{repo}/{tag}.json"


def list_key(registry: str, repo: str, kind: str, name: str) -> str:
    """A kept list answer. Repository components never start with "_", so `_tags` and
    `_referrers` cannot be a repository's directory."""
    return f"lists/{registry}/{repo}/_{kind}/{name}.json"


def key_digest(key: str) -> Digest | None:
    """The digest a content key names (`blobs/sha256/ab/ab…`, `private/<registry>/blobs/…`,
    `manifests/…`), else None."""
    parts = key.split("/")[-4:]
    if len(parts) == 4 and parts[0] in ("blobs", "manifests") and not parts[3].endswith(".json"):
        digest = Digest(parts[1], parts[3])
        return digest if digest.verifiable else None
    return None


def content_type(key: str) -> str:
    """What a tier that records a type (S3) records: JSON for metadata and tags, else bytes."""
    return "application/json" if key.endswith(".json") else OCTET_STREAM


class TierUnavailable(OSError):
    """A tier did not answer, or answered with an error that is not "no such key"."""


class ContentRejected(TierUnavailable):
    """A tier refused bytes that do not match the checksum sent with them (S3 checks)."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    # The digest the tier recorded with the object (S3 metadata); None where it records none.
    digest: str | None = None
    # Last use as the tier records it, in seconds since the epoch: the disk's mtime (set at
    # commit, refreshed by hits at most once per LAST_USE_RESOLUTION), S3's LastModified (the
    # upload). None where the tier records none.
    modified: float | None = None


class ByteSource(Protocol):
    """The bytes of one object, pulled by whoever sends or stores them: a stored file, an S3
    object, an upstream answer, a download in flight, or a verifying wrapper around any of them.

    `chunks(start, end)` yields the bytes of [start, end) (`end` None: to the end) in chunks of
    up to about 1 MiB, and raises when it cannot deliver them: OSError from a tier (S3's
    `TierUnavailable` is one), RegcacheError from upstream or verification. Sources that can be
    read again (a file, S3) allow any number of calls; an upstream answer allows one.
    `aclose()` releases what the source holds (a descriptor, a pin, a connection); it is safe
    to call twice.
    """

    size: int | None

    def chunks(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class FileBacked(Protocol):
    """A source whose bytes are in a local file: the web layer sends it with sendfile."""

    def fileno(self) -> int: ...

    async def readable(self, offset: int, end: int) -> int:
        """How far past `offset` (up to `end`) the file may be read now; waits for bytes while
        they are still being written, raises when they never will be."""


class StagedObject(Protocol):
    """A fully written, verified file that a tier can make visible under a key."""

    path: str
    size: int


class Tier(Protocol):
    """A place that holds objects by key; content is visible only once committed whole, and a
    commit or put replaces what was there atomically (a reader sees the old or the new, whole)."""

    name: str

    async def stat(self, key: str) -> ObjectInfo | None: ...

    async def open(self, key: str) -> ByteSource | None:
        """The object, or None if it is not there (or vanished since a stat)."""

    async def read_small(self, key: str) -> bytes | None: ...

    async def put_small(self, key: str, data: bytes) -> None:
        """Atomically store a small object (a manifest, its metadata, a tag pointer)."""

    async def commit(self, key: str, staged: StagedObject) -> None:
        """Make a verified staging file visible under a key, atomically. The disk takes the
        file (a rename); other tiers copy it. FileNotFoundError if it went meanwhile."""

    async def delete(self, key: str) -> None:
        """Remove the object; a missing key is fine."""

    def entries(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        """Every object under `prefix` with its size and last use, in no particular order: one
        listing, not a stat per key (the operator's commands walk whole tiers with it)."""


class SharedTier(Tier, Protocol):
    """A tier behind the local one that every replica shares (S3): it can give a client a URL
    of its own, and it holds a client that is closed at shutdown."""

    async def presign(self, key: str, expires: int) -> str: ...

    async def close(self) -> None: ...
