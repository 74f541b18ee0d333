"""Lookup and commit order across tiers: local disk first, then the shared S3 bucket.

Writes land on the local disk (atomic rename) and become visible there at once; in S3 mode the
replicator then copies them to the bucket in the background, so a slow or failing S3 never holds
up a pull. Reads look at the disk first; small objects found only in S3 are verified and copied
back to the disk; blobs found only in S3 are streamed through a fill by the blob service (which
verifies and stores them locally on the way). The local tier may be bounded: past its limit the
least recently used objects are evicted, never one being read or not yet in S3.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from regcache import metrics
from regcache.oci.digest import Digest
from regcache.storage.base import StagedObject
from regcache.storage.disk import DiskTier, FileReader
from regcache.storage.local_index import LocalIndex
from regcache.storage.replicator import Replicator
from regcache.storage.s3 import S3Object, S3Tier

log = logging.getLogger(__name__)

OCTET_STREAM = "application/octet-stream"


def key_digest(key: str) -> Digest | None:
    """The digest a content key names (`blobs/sha256/ab/ab…`, `private/<registry>/blobs/…`,
    `manifests/…`), else None."""
    parts = key.split("/")[-4:]
    if len(parts) == 4 and parts[0] in ("blobs", "manifests") and not parts[3].endswith(".json"):
        digest = Digest(parts[1], parts[3])
        return digest if digest.verifiable else None
    return None


def _content_type(key: str) -> str:
    return "application/json" if key.endswith(".json") else OCTET_STREAM


class TieredStore:
    def __init__(
        self,
        local: DiskTier,
        shared: S3Tier | None = None,
        index: LocalIndex | None = None,
        replicator: Replicator | None = None,
    ) -> None:
        self.local = local
        self.shared = shared
        self.index = index
        self.replicator = replicator
        if replicator is not None:
            replicator.on_done = self.evict

    # --- reads --------------------------------------------------------------------------------
    async def open(self, key: str) -> FileReader | None:
        """The object from the local tier, pinned against eviction until the reader closes."""
        try:
            reader = await self.local.open(key)
        except OSError as exc:
            self._failed("disk", "open", key, exc)
            return None
        if reader is not None and self.index is not None:
            self.index.touch(key)
            self.index.pin(key)
            reader.on_close = lambda: self._closed(key)
        return reader

    def exists_locally(self, key: str) -> bool:
        if self.index is not None:
            self.index.touch(key)
        return self.local.exists(key)

    def _closed(self, key: str) -> None:
        if self.index is not None:
            self.index.unpin(key)
            self.evict()

    @property
    def has_shared(self) -> bool:
        return self.shared is not None

    async def presign(self, key: str, expires: int) -> str:
        assert self.shared is not None
        return await self.shared.presign(key, expires)

    async def open_shared(self, key: str) -> _S3Source | None:
        if self.shared is None:
            return None
        try:
            opened = await self.shared.open_stream(key)
        except OSError:
            return None
        if opened is None:
            return None
        return _S3Source(opened[0].size, opened[1])

    async def stat_shared(self, key: str) -> S3Object | None:
        """An object S3 holds, if its recorded digest agrees with its key (else it is deleted)."""
        if self.shared is None or not self.shared.available:
            return None
        try:
            found = await self.shared.stat(key)
        except OSError:
            return None  # counted and logged by the tier
        if found is None:
            return None
        expected = key_digest(key)
        if expected is not None and found.digest is not None and found.digest != str(expected):
            log.warning("S3 object %s records digest %s; ignored and deleted", key, found.digest)
            metrics.VERIFICATION_FAILURES.labels("s3", "digest").inc()
            await self.delete_shared(key)
            return None
        return found

    async def read_small(self, key: str) -> bytes | None:
        try:
            data = await self.local.read_small(key)
        except OSError as exc:
            self._failed("disk", "read", key, exc)
            data = None
        if data is not None:
            if self.index is not None:
                self.index.touch(key)
            return data
        if self.shared is None or not self.shared.available:
            return None
        try:
            data = await self.shared.read_small(key)
        except OSError:
            return None
        if data is None:
            return None
        expected = key_digest(key)
        if expected is not None and Digest.of(data) != expected:
            log.warning("S3 object %s does not hash to its key; ignored and deleted", key)
            metrics.VERIFICATION_FAILURES.labels("s3", "digest").inc()
            await self.delete_shared(key)
            return None
        await self._put_local(key, data)  # the next read is local
        return data

    # --- writes -------------------------------------------------------------------------------
    async def put_small(self, key: str, data: bytes) -> bool:
        """Store a small object locally (atomically) and, in S3 mode, queue it for the bucket."""
        if not await self._put_local(key, data):
            return False
        if self.replicator is not None:
            digest = key_digest(key)
            self.replicator.enqueue(key, _content_type(key), str(digest) if digest else None)
        return True

    async def _put_local(self, key: str, data: bytes) -> bool:
        try:
            await self.local.put_small(key, data)
        except OSError as exc:
            self._failed("disk", "write", key, exc)
            return False
        self._added(key, len(data))
        return True

    async def commit(self, key: str, staged: StagedObject, digest: str | None = None, replicate: bool = True) -> bool:
        """Make a verified staging file visible locally; then (S3 mode) queue its upload.

        `replicate=False` for objects that came from S3 in the first place.
        """
        try:
            await self.local.commit(key, staged)
        except OSError as exc:
            self._failed("disk", "commit", key, exc)
            return False
        if self.replicator is not None and replicate:
            self.replicator.enqueue(key, OCTET_STREAM, digest)
        self._added(key, staged.size)
        return True

    async def delete_shared(self, key: str) -> None:
        if self.shared is not None:
            try:
                await self.shared.delete(key)
            except OSError:
                pass  # counted and logged by the tier

    def _added(self, key: str, size: int) -> None:
        if self.index is None:
            return
        self.index.add(key, size)
        self.evict()

    def evict(self) -> None:
        """Drop least recently used objects until the local tier is under its limit."""
        if self.index is None:
            return
        for victim in self.index.victims():
            try:
                self.local.unlink(victim)
            except OSError as exc:
                self._failed("disk", "evict", victim, exc)
                continue
            metrics.EVICTIONS.inc()
            log.debug("evicted %s from the local tier", victim)

    @staticmethod
    def _failed(tier: str, op: str, key: str, exc: OSError) -> None:
        metrics.TIER_ERRORS.labels(tier, op).inc()
        log.warning("storage %s: %s %s failed: %s", tier, op, key, exc)


class _S3Source:
    """Temporary: one read from the start (the tiers branch brings ranged reads)."""

    def __init__(self, size: int, chunks: AsyncIterator[bytes]) -> None:
        self.size = size
        self._chunks = chunks

    async def chunks(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        skip = start
        async for chunk in self._chunks:
            if skip:
                dropped = min(skip, len(chunk))
                skip -= dropped
                chunk = chunk[dropped:]
                if not chunk:
                    continue
            yield chunk

    async def aclose(self) -> None:
        pass
