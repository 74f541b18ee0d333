"""Lookup and commit order across tiers: local disk first, then the shared S3 bucket.

Writes land on the local disk (atomic rename) and become visible there at once; in S3 mode the
replicator then copies them to the bucket in the background, so a slow or failing S3 never holds
up a pull. Reads look at the disk first; small objects found only in S3 are verified and copied
back to the disk; blobs found only in S3 are streamed through a fill by the blob service (which
verifies and stores them locally on the way). The local tier may be bounded: past its limit the
least recently used objects are evicted, never one being read or not yet in S3.

A shared tier that fails answers "not there" here (None, False): the pull goes upstream; the
tier counts and logs its own failures.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from regcache import metrics
from regcache.oci.digest import Digest
from regcache.storage.base import ByteSource, ObjectInfo, SharedTier, StagedObject, key_digest
from regcache.storage.disk import DiskTier, FileSource
from regcache.storage.local_index import LocalIndex
from regcache.storage.replicator import Replicator

log = logging.getLogger(__name__)

T = TypeVar("T")


class TieredStore:
    def __init__(self, local: DiskTier, shared: SharedTier | None = None, index: LocalIndex | None = None) -> None:
        self.local = local
        self.shared = shared
        self.index = index
        self.replicator = Replicator(local, shared, index, on_done=self.evict) if shared is not None else None

    def start(self) -> int:
        """Start replicating (resuming what a previous run left) and get under the local limit;
        returns how many uploads were resumed. Needs the running event loop."""
        resumed = self.replicator.start() if self.replicator is not None else 0
        self.evict()  # after the resumed uploads pinned their objects
        return resumed

    async def close(self) -> None:
        """Stop replicating (pending uploads resume at the next start) and close the shared tier."""
        if self.replicator is not None:
            await self.replicator.close()
        if self.shared is not None:
            await self.shared.close()

    @property
    def has_shared(self) -> bool:
        return self.shared is not None

    # --- reads --------------------------------------------------------------------------------
    async def open(self, key: str) -> FileSource | None:
        """The object from the local tier, pinned against eviction until the source closes."""
        try:
            source = await self.local.open(key, on_close=lambda: self._closed(key))
        except OSError as exc:
            self._failed("open", key, exc)
            return None
        if source is not None and self.index is not None:
            self.index.touch(key)
            self.index.pin(key)
        return source

    def exists_locally(self, key: str) -> bool:
        if self.index is not None:
            self.index.touch(key)
        return self.local.exists(key)

    def _closed(self, key: str) -> None:
        if self.index is not None:
            self.index.unpin(key)
            self.evict()

    async def stat_shared(self, key: str) -> ObjectInfo | None:
        """An object S3 holds, if its recorded digest agrees with its key (else it is deleted)."""
        found = await self._ask_shared(lambda shared: shared.stat(key))
        if found is None or not await self._agrees(key, found.digest, f"records digest {found.digest}"):
            return None
        return found

    async def open_shared(self, key: str) -> ByteSource | None:
        """The object from the shared tier, unverified (the reader verifies what it copies)."""
        return await self._ask_shared(lambda shared: shared.open(key))

    async def presign(self, key: str, expires: int) -> str:
        """A URL a client can fetch the shared object from without us; raises without a shared tier."""
        if self.shared is None:
            raise LookupError(f"no shared tier to presign {key} in")
        return await self.shared.presign(key, expires)

    async def read_small(self, key: str) -> bytes | None:
        try:
            data = await self.local.read_small(key)
        except OSError as exc:
            self._failed("read", key, exc)
            data = None
        if data is not None:
            if self.index is not None:
                self.index.touch(key)
            return data
        data = await self._ask_shared(lambda shared: shared.read_small(key))
        if data is None or not await self._agrees(key, Digest.of(data), "does not hash to its key"):
            return None
        await self._put_local(key, data)  # the next read is local
        return data

    # --- writes -------------------------------------------------------------------------------
    async def put_small(self, key: str, data: bytes) -> bool:
        """Store a small object locally (atomically) and, in S3 mode, queue it for the bucket."""
        if not await self._put_local(key, data):
            return False
        if self.replicator is not None:
            await self.replicator.enqueue(key)
        return True

    async def _put_local(self, key: str, data: bytes) -> bool:
        try:
            await self.local.put_small(key, data)
        except OSError as exc:
            self._failed("write", key, exc)
            return False
        self._added(key, len(data))
        return True

    async def commit(self, key: str, staged: StagedObject, replicate: bool = True) -> bool:
        """Make a verified staging file visible locally; then (S3 mode) queue its upload.

        `replicate=False` for objects that came from S3 in the first place.
        """
        try:
            await self.local.commit(key, staged)
        except OSError as exc:
            self._failed("commit", key, exc)
            return False
        if self.replicator is not None and replicate:
            await self.replicator.enqueue(key)
        self._added(key, staged.size)
        return True

    async def delete_shared(self, key: str) -> None:
        await self._ask_shared(lambda shared: shared.delete(key))

    async def _ask_shared(self, call: Callable[[SharedTier], Awaitable[T]]) -> T | None:
        """The shared tier's answer; None without a shared tier or when it failed (counted and
        logged by the tier)."""
        if self.shared is None:
            return None
        try:
            return await call(self.shared)
        except OSError:
            return None

    async def _agrees(self, key: str, digest: Digest | str | None, why: str) -> bool:
        """Whether a shared object's digest (None: not recorded) is the one its key names. One that
        is not what its key names is deleted, so the next pull refetches it."""
        expected = key_digest(key)
        if expected is None or digest is None or str(digest) == str(expected):
            return True
        log.warning("S3 object %s %s; ignored and deleted", key, why)
        metrics.VERIFICATION_FAILURES.labels("s3", "digest").inc()
        await self.delete_shared(key)
        return False

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
                self._failed("evict", victim, exc)
                continue
            metrics.EVICTIONS.inc()
            log.debug("evicted %s from the local tier", victim)

    @staticmethod
    def _failed(op: str, key: str, exc: OSError) -> None:
        metrics.TIER_ERRORS.labels("disk", op).inc()
        log.warning("storage disk: %s %s failed: %s", op, key, exc)
