"""Copies what the local tier committed into S3, in the background, until it is there.

A pull never waits for S3: the object is visible locally first and uploaded after. Each pending
upload leaves a marker file in `uploads/` so that a restart resumes it, and pins its object in the
local index so eviction cannot drop the only copy. Small objects (manifests, their metadata, tag
pointers) go up one at a time in the order they were written, so a tag never reaches S3 before
the manifest it points to; blobs go up on their own workers. A failing S3 holds its lane and
retries with backoff; an object deleted locally meanwhile is dropped.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from regcache import metrics
from regcache.storage.local_index import LocalIndex
from regcache.storage.s3 import BACKOFF_FIRST, BACKOFF_MAX, ContentRejected, S3Tier, TierUnavailable

log = logging.getLogger(__name__)

UPLOADS_DIR = "uploads"
BLOB_WORKERS = 2


def is_blob(key: str) -> bool:
    return key.startswith(("blobs/", "private/"))


@dataclass(frozen=True)
class Upload:
    key: str
    content_type: str
    digest: str | None


class Replicator:
    def __init__(self, root: Path, shared: S3Tier, index: LocalIndex | None) -> None:
        self._root = root
        self._markers = root / UPLOADS_DIR
        self._markers.mkdir(parents=True, exist_ok=True)
        self._shared = shared
        self._index = index
        self._small: asyncio.Queue[Upload] = asyncio.Queue()
        self._blobs: asyncio.Queue[Upload] = asyncio.Queue()
        self._queued: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        # Called after each finished upload: an unpinned object may now be evicted.
        self.on_done: Callable[[], None] | None = None

    def start(self) -> int:
        """Start the workers and resume the uploads a previous run left; returns how many."""
        resumed = 0
        for marker in sorted(self._markers.iterdir(), key=lambda p: p.stat().st_mtime):
            try:
                upload = Upload(**json.loads(marker.read_text()))
            except (OSError, ValueError, TypeError):
                marker.unlink(missing_ok=True)
                continue
            self._queue(upload)
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

    def enqueue(self, key: str, content_type: str, digest: str | None) -> None:
        upload = Upload(key, content_type, digest)
        marker = self._marker(key)
        try:
            temp = marker.with_suffix(".tmp")
            temp.write_text(json.dumps(asdict(upload)))
            os.replace(temp, marker)
        except OSError as exc:
            # Without a marker a restart would forget it; the upload itself can still happen.
            log.warning("cannot record the pending upload of %s: %s", key, exc)
        self._queue(upload)

    def _queue(self, upload: Upload) -> None:
        if upload.key in self._queued:
            return
        self._queued.add(upload.key)
        if self._index is not None:
            self._index.pin(upload.key)
        metrics.UPLOADS_PENDING.set(len(self._queued))
        (self._blobs if is_blob(upload.key) else self._small).put_nowait(upload)

    def _marker(self, key: str) -> Path:
        return self._markers / hashlib.sha256(key.encode()).hexdigest()

    async def _work(self, queue: asyncio.Queue[Upload]) -> None:
        while True:
            upload = await queue.get()
            backoff = BACKOFF_FIRST
            while True:
                try:
                    result = await self._upload(upload)
                    break
                except ContentRejected as exc:
                    # The local copy no longer hashes to its key (S3 checked): drop it, so the
                    # next pull fetches the object again.
                    log.warning("S3 refused %s (%s); removing the local copy", upload.key, exc)
                    (self._root / upload.key).unlink(missing_ok=True)
                    if self._index is not None:
                        self._index.remove(upload.key)
                    result = "rejected"
                    break
                except TierUnavailable:
                    # Counted and logged (once per burst) by the tier; hold the lane and retry.
                    await asyncio.sleep(max(backoff, 0.1))
                    backoff = min(backoff * 2, BACKOFF_MAX)
                except asyncio.CancelledError:
                    raise
                except Exception:  # a task boundary: log, count, drop this one, keep the lane
                    log.exception("upload of %s to S3 failed", upload.key)
                    result = "error"
                    break
            metrics.UPLOADS.labels(result).inc()
            self._done(upload)

    async def _upload(self, upload: Upload) -> str:
        path = self._root / upload.key
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            return "vanished"
        if is_blob(upload.key):
            # Another replica may have put it there already: S3 keys name their content.
            there = await self._shared.stat(upload.key)
            if there is not None and there.size == size:
                return "present"
        try:
            await self._shared.upload_file(upload.key, str(path), size, upload.content_type, upload.digest)
        except FileNotFoundError:
            return "vanished"
        log.debug("uploaded %s (%d bytes) to S3", upload.key, size)
        return "uploaded"

    def _done(self, upload: Upload) -> None:
        self._marker(upload.key).unlink(missing_ok=True)
        self._queued.discard(upload.key)
        if self._index is not None:
            self._index.unpin(upload.key)
        metrics.UPLOADS_PENDING.set(len(self._queued))
        if self.on_done is not None:
            self.on_done()
