"""The spool: the staging file a download is written into, and the readers that tail it.

A spool is written by exactly one fill, in order: each batch of chunks is written by a writer
thread and hashed by a hasher thread at the same time (writes and sha256 both release the GIL,
so the two run on two cores while the event loop only does bookkeeping). Readers share the
file through positional reads on descriptors of their own, so a rename at commit or an unlink
after a failure never pulls bytes from under them. Until the spool has verified, every reader is
kept one byte short of the object's end and of its own range's end: no client ever holds a
complete-looking body of unverified bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from regcache import metrics
from regcache.cache.verifying import verify
from regcache.errors import RegcacheError, StorageError
from regcache.oci.digest import Digest
from regcache.storage.staging import StagingFile

# Bytes withheld from readers until the download verifies.
HOLDBACK = 1
# Chunks written in one system call at most (IOV_MAX is 1024).
MAX_BATCH = 512
# Bytes waiting for the writer at which `append` makes the fill wait (the disk is slower than
# the network): memory per download stays bounded whatever the blob size.
PAUSE_AT = 8 * 1024 * 1024
READ_CHUNK = 1 << 20
# Each spool has at most one batch in flight in each, so its bytes land and hash in order.
_WRITER = ThreadPoolExecutor(max_workers=4, thread_name_prefix="regcache-spool")
_HASHER = ThreadPoolExecutor(max_workers=4, thread_name_prefix="regcache-sha256")


class Spool:
    """One download's staging file: append, verify, then commit or discard."""

    def __init__(self, root: Path, registry: str, expected: Digest | None) -> None:
        try:
            self.staging = StagingFile(root)
        except OSError as exc:
            metrics.TIER_ERRORS.labels("staging", "create").inc()
            raise StorageError(
                f"cache storage unavailable ({exc.strerror}); fetch {expected} from the registry"
            ) from exc
        self.registry = registry
        self.expected = expected
        self.size: int | None = None  # the object's size, once the source has said it
        self.received = 0  # bytes handed to append
        self.written = 0  # bytes on disk and hashed
        self.verified = False
        self.error: RegcacheError | None = None
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._unhashed: list[bytes] = []
        self._sha256 = hashlib.sha256()
        self._hashing = False
        self._writing = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._drained = asyncio.Event()
        self._drained.set()
        self._waiters: list[asyncio.Future[None]] = []

    def expect(self, size: int | None) -> None:
        """The object's size, from the source's answer: its space is claimed now, so a full disk
        is found before the client is answered (a 503 sends it to the registry), not half-way."""
        self.size = size
        if size:
            try:
                self.staging.reserve(size)
            except OSError as exc:
                metrics.TIER_ERRORS.labels("staging", "reserve").inc()
                raise StorageError(f"cache storage cannot hold {size} bytes ({exc.strerror})") from exc

    async def append(self, chunk: bytes) -> None:
        """Queue bytes for the writer; waits only while too many are waiting already."""
        if self.error is not None:
            raise self.error
        self.received += len(chunk)
        self._pending.append(chunk)
        self._pending_bytes += len(chunk)
        self._unhashed.append(chunk)
        self._write_next()
        self._hash_next()
        if self._pending_bytes >= PAUSE_AT:
            self._drained.clear()
            await self._drained.wait()
            if self.error is not None:
                raise self.error

    def _write_next(self) -> None:
        if self._writing or not self._pending or self.error is not None:
            return
        batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
        self._writing = True
        self._idle.clear()
        done = asyncio.get_running_loop().run_in_executor(_WRITER, self.staging.write, batch)
        done.add_done_callback(lambda done: self._written(done, sum(len(c) for c in batch)))

    def _written(self, done: asyncio.Future[None], size: int) -> None:
        self._writing = False
        self._pending_bytes -= size
        exc = done.exception()
        if exc is not None:
            metrics.TIER_ERRORS.labels("staging", "write").inc()
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            self.fail(StorageError(f"cache storage failed mid-download ({reason})"))
        else:
            self.written = self.staging.size
            self._wake()
            self._write_next()
        self._settle()

    def _hash_next(self) -> None:
        if self._hashing or not self._unhashed or self.error is not None:
            return
        batch, self._unhashed = self._unhashed[:MAX_BATCH], self._unhashed[MAX_BATCH:]
        self._hashing = True
        self._idle.clear()
        done = asyncio.get_running_loop().run_in_executor(_HASHER, _update, self._sha256, batch)
        done.add_done_callback(self._hashed)

    def _hashed(self, done: asyncio.Future[None]) -> None:
        self._hashing = False
        done.result()  # sha256 of bytes in memory does not fail
        self._hash_next()
        self._settle()

    def _settle(self) -> None:
        if not self._writing and not self._hashing:
            self._idle.set()
        if self._pending_bytes < PAUSE_AT // 4 or self.error is not None:
            self._drained.set()

    async def finish(self) -> None:
        """Wait for the writer and the hasher, then check size and digest; raises the mismatch (and fails the
        spool) when the bytes are not the object."""
        await self._idle.wait()
        if self.error is not None:
            raise self.error
        try:
            verify(self.registry, self.expected, self.size, self.written, self._sha256)
        except RegcacheError as exc:
            self.fail(exc)
            raise
        self.verified = True
        self._wake()
        # On disk before it is visible: a power cut must not leave a renamed empty file.
        await asyncio.get_running_loop().run_in_executor(None, self.staging.sync)

    def fail(self, error: RegcacheError) -> None:
        if self.error is None:
            self.error = error
        self._drained.set()
        self._wake()

    async def close(self, keep: bool) -> None:
        """Release the file once the threads are done with it (closing a descriptor under a write
        could let its number be reused by another file and written into); `keep` after commit."""
        await self._idle.wait()
        if keep:
            self.staging.close()
        else:
            self.staging.discard()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def readable(self, offset: int, end: int | None = None) -> int:
        """How far a reader at `offset`, reading up to `end`, may read now; waits for bytes.

        Returns `offset` itself only at the verified end; raises the spool's error."""
        while True:
            if self.error is not None:
                raise self.error
            if self.verified:
                return self.written if end is None else min(end, self.written)
            limit = max(0, self.written - HOLDBACK)
            if end is not None:
                limit = min(limit, end - HOLDBACK)
            if limit > offset:
                return limit
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter


class SpoolReader:
    """A client's view of a spool (a ByteSource, and FileBacked for sendfile): its own
    descriptor, valid after the staging file is renamed or removed."""

    def __init__(self, spool: Spool, on_close: Callable[[], None]) -> None:
        self._spool = spool
        self._fd = spool.staging.dup()
        # Run once when the reader closes: the fill gives the reader's slot back.
        self._on_close = on_close

    @property
    def size(self) -> int | None:
        return self._spool.size

    def fileno(self) -> int:
        return self._fd

    async def readable(self, offset: int, end: int) -> int:
        return await self._spool.readable(offset, end)

    async def chunks(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        position = start
        while end is None or position < end:
            limit = await self._spool.readable(position, end)
            if limit <= position:
                return  # the verified end of an object of unknown size
            chunk = os.pread(self._fd, min(READ_CHUNK, limit - position), position)
            if not chunk:
                raise StorageError("the staging file shrank under its reader")
            position += len(chunk)
            yield chunk

    async def aclose(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._on_close()


def _update(sha256: hashlib._Hash, chunks: list[bytes]) -> None:
    for chunk in chunks:
        sha256.update(chunk)
