"""Copies what the local tier committed into S3, in the background, until it is there.

A pull never waits for S3: the object is visible locally first and uploaded after. Each pending
upload leaves a marker file in `uploads/` so that a restart resumes it, and pins its object in the
local index so eviction cannot drop the only copy. Small objects (manifests, their metadata, tag
pointers) go up one at a time in the order they were written, so a tag never reaches S3 before
the manifest it points to; blobs go up on their own workers. A failing S3 holds its lane and
retries with backoff; an object deleted locally meanwhile is dropped. S3 checks every upload
against the digest its key names: a local copy it refuses is deleted, so the next pull refetches.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

from regcache import metrics
from regcache.breaker import CircuitBreaker
from regcache.storage.base import ContentRejected, Tier, TierUnavailable
from regcache.storage.disk import DiskTier
from regcache.storage.local_index import LocalIndex

log = logging.getLogger(__name__)

UPLOADS_DIR = "uploads"
BLOB_WORKERS = 2


def marker_key(marker: Path) -> str | None:
    """The key a pending-upload marker names; None for one unreadable or torn."""
    try:
        key = json.loads(marker.read_text())["key"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return key if isinstance(key, str) else None


def pending_uploads(root: Path) -> frozenset[str]:
    """The keys still waiting for S3, from the markers in `<cache-dir>/uploads/`: what an
    operator's command must leave alone while a server may be uploading them."""
    try:
        markers = list((root / UPLOADS_DIR).iterdir())
    except FileNotFoundError:
        return frozenset()
    return frozenset(key for key in map(marker_key, markers) if key is not None)


def is_blob(key: str) -> bool:
    return key.startswith(("blobs/", "private/"))


class Replicator:
    def __init__(self, local: DiskTier, shared: Tier, index: LocalIndex | None, on_done: Callable[[], None]) -> None:
        self._local = local
        self._markers = local.root / UPLOADS_DIR
        self._markers.mkdir(parents=True, exist_ok=True)
        self._shared = shared
        self._index = index
        # Called after each finished upload: an unpinned object may now be evicted.
        self._on_done = on_done
        self._small: asyncio.Queue[str] = asyncio.Queue()
        self._blobs: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> int:
        """Start the workers and resume the uploads a previous run left; returns how many."""
        resumed = 0
        for marker in sorted(self._markers.iterdir(), key=lambda p: p.stat().st_mtime):
            key = marker_key(marker)
            if key is None:
                marker.unlink(missing_ok=True)
                continue
            self._queue(key)
            resumed += 1
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._work(self._small)))
        self._tasks.extend(loop.create_task(self._work(self._blobs)) for _ in range(BLOB_WORKERS))
        return resumed

    async def close(self) -> None:
        """Stop uploading; what is still pending resumes at the next start (markers stay)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def enqueue(self, key: str) -> None:
        try:
            # Written as the disk writes every small object: whole or not at all.
            await self._local.put_small(self._marker(key), json.dumps({"key": key}).encode())
        except OSError as exc:
            # Without a marker a restart would forget it; the upload itself can still happen.
            log.warning("cannot record the pending upload of %s: %s", key, exc)
        self._queue(key)

    def _queue(self, key: str) -> None:
        if key in self._queued:
            return
        self._queued.add(key)
        if self._index is not None:
            self._index.pin(key)
        metrics.UPLOADS_PENDING.set(len(self._queued))
        (self._blobs if is_blob(key) else self._small).put_nowait(key)

    def _marker(self, key: str) -> str:
        return f"{UPLOADS_DIR}/{hashlib.sha256(key.encode()).hexdigest()}"

    async def _work(self, queue: asyncio.Queue[str]) -> None:
        backoff = CircuitBreaker()
        while True:
            key = await queue.get()
            while True:
                try:
                    result = await self._upload(key)
                    break
                except ContentRejected as exc:
                    # The local copy no longer hashes to its key (S3 checked): drop it, so the
                    # next pull fetches the object again.
                    log.warning("S3 refused %s (%s); removing the local copy", key, exc)
                    await self._local.delete(key)
                    if self._index is not None:
                        self._index.remove(key)
                    result = "rejected"
                    break
                except TierUnavailable:
                    # Counted and logged (once per burst) by the tier; hold the lane and retry.
                    await asyncio.sleep(backoff.failed())
                except Exception:  # a task boundary: log, count, drop this one, keep the lane
                    log.exception("upload of %s to S3 failed", key)
                    result = "error"
                    break
            backoff.succeeded()
            metrics.UPLOADS.labels(result).inc()
            self._done(key)

    async def _upload(self, key: str) -> str:
        stored = self._local.stored(key)
        if stored is None:
            return "vanished"
        if is_blob(key):
            # Another replica may have put it there already: S3 keys name their content.
            there = await self._shared.stat(key)
            if there is not None and there.size == stored.size:
                return "present"
        try:
            await self._shared.commit(key, stored)
        except FileNotFoundError:
            return "vanished"
        log.debug("uploaded %s (%d bytes) to S3", key, stored.size)
        return "uploaded"

    def _done(self, key: str) -> None:
        self._local.unlink(self._marker(key))
        self._queued.discard(key)
        if self._index is not None:
            self._index.unpin(key)
        metrics.UPLOADS_PENDING.set(len(self._queued))
        self._on_done()
