"""One upstream download into a staging file, shared by every client that asks for the object.

A fill runs as its own task: clients are only its readers, so a client that disconnects never
cancels it, and a slow client never slows it (each reader tails the staging file at its own pace,
holding one chunk in memory). The last byte is held back from readers until size and digest are
verified, so a bad download can never look complete to a client; it is then committed to the
store and leaves the in-flight map.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tornado.httputil import HTTPHeaders

from regcache import metrics
from regcache.errors import DigestMismatch, RegcacheError, SizeMismatch, StorageError, UpstreamError
from regcache.oci.digest import Digest
from regcache.storage.staging import StagingFile
from regcache.upstream.client import UpstreamResponse

log = logging.getLogger(__name__)

# Bytes withheld from readers until the download verifies.
HOLDBACK = 1
# Chunks written in one system call at most (IOV_MAX is 1024).
MAX_BATCH = 512
# Bytes received but not yet handed to the writer at which the upstream transfer is paused (the
# disk is slower than the network), and below which it goes on: memory per fill stays bounded
# whatever the blob size.
PAUSE_AT = 8 * 1024 * 1024
RESUME_BELOW = 2 * 1024 * 1024
# Range requests that continue a download the upstream broke off, before it is given up.
MAX_RESUMES = 2
# Writes and hashing of staging files run here; each fill has at most one batch in flight, so
# its bytes land in order.
_WRITER = ThreadPoolExecutor(max_workers=4, thread_name_prefix="regcache-staging")


class Overloaded(RegcacheError):
    """More downloads, or more readers of one, than the limits allow: the client should get the
    object from the registry itself (503), not wait for the cache."""


@dataclass(frozen=True)
class FillHead:
    """The upstream's final answer, known before the body: what the client is told first."""

    response: UpstreamResponse
    size: int | None

    @property
    def ok(self) -> bool:
        return 200 <= self.response.status < 300


class Fill:
    """Downloads one object; implements the upstream client's Sink."""

    def __init__(
        self, key: str, registry: str, expected: Digest | None, staging: StagingFile, identity: tuple[str, ...] = ()
    ) -> None:
        self.key = key
        self.identity = identity
        self.registry = registry
        self.expected = expected
        self.staging = staging
        self.head: asyncio.Future[FillHead] = asyncio.get_running_loop().create_future()
        self.size: int | None = None
        self.written = 0
        self.verified = False
        self.committed = False
        self.error: RegcacheError | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._resume: Callable[[], None] | None = None
        self._writing = False
        self._idle = asyncio.Event()
        self._idle.set()
        # Resuming: bytes received so far, the Range header the upstream client sends (it reads
        # `extra_headers` from its sink) and bytes of a 200 answer that we already have.
        self.received = 0
        self.extra_headers: dict[str, str] = {}
        self._skip = 0
        self.readers = 0
        self.max_readers: int | None = None

    # --- Sink ---------------------------------------------------------------------------------
    def on_headers(self, status: int, headers: HTTPHeaders) -> bool:
        if self.head.done():
            self._resumed(status, headers)
            return True
        length = headers.get("Content-Length")
        self.size = int(length) if length and length.isdigit() else None
        if self.size:
            try:
                # Claim the space now: a full disk is found before the client is answered (it
                # then gets a 503 and goes to the registry), not half-way through the body.
                self.staging.reserve(self.size)
            except OSError as exc:
                metrics.TIER_ERRORS.labels("staging", "reserve").inc()
                raise StorageError(f"cache storage cannot hold {self.size} bytes ({exc.strerror})") from exc
        self.head.set_result(FillHead(UpstreamResponse(status, headers), self.size))
        return True

    async def drained(self) -> None:
        """For sources read with await (S3): wait while the writer is behind, as `full` pauses
        the upstream client's transfers."""
        if self.full:
            await self._idle.wait()

    @property
    def full(self) -> bool:
        """Whether the source should pause until the writer catches up."""
        return self._pending_bytes >= PAUSE_AT and self.error is None

    def on_pause(self, resume: Callable[[], None]) -> None:
        self._resume = resume

    def _maybe_resume(self) -> None:
        if self._resume is not None and (self._pending_bytes < RESUME_BELOW or self.error is not None):
            resume, self._resume = self._resume, None
            resume()

    def _resumed(self, status: int, headers: HTTPHeaders) -> None:
        """The answer to a Range request that continues this download: it must continue it."""
        offset = self.received
        if status == 200 and headers.get("Content-Length") == str(self.size):
            self._skip = offset  # the upstream ignored the Range: drop what we already have
            return
        expected = f"bytes {offset}-{(self.size or 0) - 1}/{self.size}"
        if status != 206 or headers.get("Content-Range", "").replace(" ", "") != expected.replace(" ", ""):
            raise UpstreamError(
                self.registry,
                f"cannot resume at byte {offset}: answered {status} {headers.get('Content-Range', '')}".rstrip(),
            )

    @property
    def abandoned(self) -> bool:
        return self.error is not None

    def on_chunk(self, chunk: bytes) -> None:
        """Queue a chunk for the writer thread, which writes and hashes while the event loop
        goes on receiving and sending (both release the GIL): chunks that arrive meanwhile
        make the next, larger batch."""
        if self.error is not None:
            return
        if self._skip:
            dropped = min(self._skip, len(chunk))
            self._skip -= dropped
            chunk = chunk[dropped:]
            if not chunk:
                return
        self.received += len(chunk)
        self._pending.append(chunk)
        self._pending_bytes += len(chunk)
        self._write_next()

    def _write_next(self) -> None:
        if self._writing or not self._pending or self.error is not None:
            return
        batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
        self._pending_bytes -= sum(len(c) for c in batch)
        self._writing = True
        self._idle.clear()
        done = asyncio.get_running_loop().run_in_executor(_WRITER, self.staging.append, batch)
        done.add_done_callback(self._written)

    def _written(self, done: asyncio.Future[None]) -> None:
        self._writing = False
        exc = done.exception()
        if exc is not None:
            metrics.TIER_ERRORS.labels("staging", "write").inc()
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            self._fail(StorageError(f"cache storage failed mid-download ({reason})"))
        else:
            self.written = self.staging.size
            self._wake()
            self._write_next()
        if not self._writing:
            self._idle.set()
        self._maybe_resume()

    # --- the task -----------------------------------------------------------------------------
    async def run(
        self,
        fetch: Callable[[Fill], Awaitable[UpstreamResponse]],
        commit: Callable[[StagingFile], Awaitable[bool]] | None,
    ) -> None:
        started = time.monotonic()
        metrics.FILLS_IN_FLIGHT.inc()
        try:
            resumes = 0
            while True:
                try:
                    response = await fetch(self)
                    break
                except UpstreamError as exc:
                    if not self._resumable(resumes):
                        self._fail(exc)
                        return
                    resumes += 1
                    log.warning(
                        "fill %s: %s after %d of %d bytes; resuming with a Range request (%d of %d)",
                        self.key,
                        exc,
                        self.received,
                        self.size,
                        resumes,
                        MAX_RESUMES,
                    )
                    metrics.FILL_RESUMES.labels(metrics.registry_label(self.registry)).inc()
                    self.extra_headers = {"Range": f"bytes={self.received}-"}
                    self._skip = 0
                except RegcacheError as exc:
                    self._fail(exc)
                    return
            if resumes and not 200 <= response.status < 300:
                self._fail(
                    UpstreamError(self.registry, f"cannot resume at byte {self.received}: answered {response.status}")
                )
                return
            if not self.head.done():
                # Not a 2xx: the client gets the upstream's answer as it is; nothing is stored.
                self.head.set_result(FillHead(response, len(response.body)))
                return
            await self._idle.wait()  # everything received is written and hashed
            if self.error is not None:
                return
            self._verify()
            if self.error is not None:
                return
            self.verified = True
            self._wake()
            if commit is not None:
                # On disk before it is visible: a power cut must not leave a renamed empty file.
                await asyncio.get_running_loop().run_in_executor(None, self.staging.sync)
                self.committed = await commit(self.staging)
            log.info(
                "fill %s from %s: %d bytes in %.2fs%s",
                self.key,
                self.registry,
                self.written,
                time.monotonic() - started,
                "" if commit is None or self.committed else " (not stored)",
            )
        except Exception as exc:  # a task boundary: log, count, and fail the readers cleanly
            log.exception("fill %s from %s failed", self.key, self.registry)
            self._fail(UpstreamError(self.registry, f"internal error: {exc}"))
        finally:
            metrics.FILLS_IN_FLIGHT.dec()
            # The writer thread may still hold the descriptor: closing it under a write could
            # let the number be reused by another file and written into.
            await self._idle.wait()
            if self.committed:
                self.staging.close()
            else:
                self.staging.discard()

    def _resumable(self, resumes: int) -> bool:
        """Whether a broken download can go on where it stopped: its 2xx answer with a length
        reached the readers, and neither it nor its storage has failed otherwise."""
        if resumes >= MAX_RESUMES or self.error is not None or not self.head.done() or self.head.exception():
            return False
        return self.head.result().ok and self.size is not None and 0 < self.received < self.size

    def _verify(self) -> None:
        if self.size is not None and self.written != self.size:
            metrics.VERIFICATION_FAILURES.labels(metrics.registry_label(self.registry), "size").inc()
            self._fail(SizeMismatch(self.registry, self.size, self.written))
            return
        if self.expected is not None and self.expected.verifiable:
            actual = self.staging.digest()
            if actual != self.expected:
                metrics.VERIFICATION_FAILURES.labels(metrics.registry_label(self.registry), "digest").inc()
                self._fail(DigestMismatch(self.registry, str(self.expected), str(actual)))

    def _fail(self, error: RegcacheError) -> None:
        if self.error is None:
            self.error = error
            # Storage failures are reported once a minute (cache/relay.py), not per download.
            level = logging.DEBUG if isinstance(error, StorageError) else logging.WARNING
            log.log(level, "fill %s: %s; nothing stored", self.key, error)
        if not self.head.done():
            self.head.set_exception(error)
            self.head.exception()  # retrieved here; readers re-raise it
        self._wake()
        self._maybe_resume()  # a paused transfer must run to notice it is abandoned

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # --- readers ------------------------------------------------------------------------------
    def attach(self) -> int:
        """A reader's own descriptor on the staging file; call while the fill is in the map.

        Raises Overloaded when the fill already has its maximum of readers.
        """
        if self.max_readers is not None and self.readers >= self.max_readers:
            metrics.OVERLOADED.labels("fill-clients").inc()
            raise Overloaded(f"{self.readers} clients are already reading this download; fetch it from the registry")
        fd = self.staging.dup()
        self.readers += 1
        return fd

    def detach(self, fd: int) -> None:
        self.readers -= 1
        os.close(fd)

    def reject(self, error: RegcacheError) -> None:
        """End a fill that may not start: its head fails at once, its staging file goes."""
        self.error = error
        self.head.set_exception(error)
        self.head.exception()
        self.staging.discard()

    async def readable(self, offset: int, end: int | None = None) -> int:
        """How far a reader at `offset`, reading up to `end`, may read now; waits for bytes.

        Until the download verifies, the last byte of the object and the last byte of the
        reader's range are held back, so no client ever holds a complete-looking body (whole
        or ranged) of unverified bytes. Returns `offset` itself only at the verified end.
        Raises the fill's error if it failed.
        """
        while True:
            if self.error is not None:
                raise self.error
            if self.verified:
                return self.written
            limit = max(0, self.written - HOLDBACK)
            if end is not None:
                limit = min(limit, end - HOLDBACK)
            if limit > offset:
                return limit
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter


class FillMap:
    """The single-flight map: at most one fill per key at a time."""

    def __init__(self, max_fills: int | None = None, max_readers: int | None = None) -> None:
        self._fills: dict[str, Fill] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._max_fills = max_fills
        self._max_readers = max_readers

    def get(self, key: str) -> Fill | None:
        return self._fills.get(key)

    def start(
        self,
        fill: Fill,
        fetch: Callable[[Fill], Awaitable[UpstreamResponse]],
        commit: Callable[[StagingFile], Awaitable[bool]] | None,
    ) -> asyncio.Task[None] | None:
        """Run the fill as its own task (returned), or refuse it when too many are in flight."""
        fill.max_readers = self._max_readers
        if self._max_fills is not None and len(self._fills) >= self._max_fills:
            metrics.OVERLOADED.labels("fills").inc()
            fill.reject(Overloaded(f"{len(self._fills)} downloads in flight; fetch it from the registry"))
            return None
        self._fills[fill.key] = fill

        async def run() -> None:
            try:
                await fill.run(fetch, commit)
            finally:
                if self._fills.get(fill.key) is fill:
                    del self._fills[fill.key]

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def __len__(self) -> int:
        return len(self._fills)
