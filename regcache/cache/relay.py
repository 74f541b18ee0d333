"""A blob streamed from the registry to one client without touching the cache's storage.

Used when regcache's own storage cannot take a download (a full disk, an unwritable cache dir):
the pull goes on as a pass-through instead of failing. Memory stays bounded: when the client
reads slower than the registry sends, the upstream transfer is paused (curl's pause), not
buffered. The bytes are hashed on the way, and the last one is held back until the digest
checks out, so a client never gets a complete-looking wrong body here either.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

from tornado.httputil import HTTPHeaders

from regcache import metrics
from regcache.cache.fill import FillHead
from regcache.errors import DigestMismatch, RegcacheError, SizeMismatch, StorageError
from regcache.oci.digest import Digest
from regcache.upstream.client import UpstreamRequest, UpstreamResponse

log = logging.getLogger(__name__)

# Bytes held for the client before the upstream transfer is paused.
BUFFER_LIMIT = 1 << 20
REPORT_INTERVAL = 60.0

Fetch = Callable[..., Awaitable[UpstreamResponse]]


class StorageHealth:
    """Recent failures of the cache's own storage: for /readyz and a log line a minute at most."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.last_failure: float | None = None
        self.reason = ""
        self._last_report = float("-inf")
        self._unreported = 0

    def failed(self, reason: str) -> None:
        """A pull went around the cache because storage failed; log at most once a minute."""
        now = self._clock()
        self.last_failure, self.reason = now, reason
        self._unreported += 1
        if now - self._last_report >= REPORT_INTERVAL:
            log.warning(
                "cache storage unavailable (%s): %d download(s) passed through uncached since the last report",
                reason,
                self._unreported,
            )
            self._last_report, self._unreported = now, 0

    def trouble(self) -> str | None:
        """The reason storage failed within the last minute, if it did."""
        if self.last_failure is not None and self._clock() - self.last_failure < REPORT_INTERVAL:
            return self.reason
        return None


STORAGE_HEALTH = StorageHealth()
# The event loop holds tasks only weakly: running transfers are kept here until they end.
_RUNNING: set[asyncio.Task[None]] = set()


class Relay:
    """The upstream client's Sink for one pass-through download; the handler reads from it."""

    def __init__(self, registry: str, expected: Digest) -> None:
        loop = asyncio.get_running_loop()
        self.registry = registry
        self.expected = expected
        self.head: asyncio.Future[FillHead] = loop.create_future()
        self.size: int | None = None
        self.error: RegcacheError | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._received = 0
        self._hash = hashlib.sha256()
        self._done = False
        self._closed = False
        self._waiter: asyncio.Future[None] | None = None
        self._resume: Callable[[], None] | None = None

    @classmethod
    async def start(cls, fetch: Fetch, request: UpstreamRequest, expected: Digest, cause: StorageError) -> Relay:
        """Send the request; returns once the upstream's answer (not its body) is known."""
        reason = str(cause)
        metrics.STORAGE_PASSTHROUGH.inc()
        STORAGE_HEALTH.failed(reason)
        relay = cls(request.registry, expected)
        task = asyncio.get_running_loop().create_task(relay._run(fetch, request))
        _RUNNING.add(task)
        task.add_done_callback(_RUNNING.discard)
        await asyncio.shield(relay.head)
        return relay

    @property
    def ok(self) -> bool:
        return self.head.result().ok

    @property
    def response(self) -> UpstreamResponse:
        return self.head.result().response

    # --- Sink -----------------------------------------------------------------------------------
    def on_headers(self, status: int, headers: HTTPHeaders) -> bool:
        length = headers.get("Content-Length")
        self.size = int(length) if length and length.isdigit() else None
        self.head.set_result(FillHead(UpstreamResponse(status, headers), self.size))
        return True

    def on_chunk(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        self._received += len(chunk)
        self._hash.update(chunk)
        self._wake()

    @property
    def abandoned(self) -> bool:
        return self._closed

    @property
    def full(self) -> bool:
        """Whether the upstream transfer should pause until the client catches up."""
        return self._buffered >= BUFFER_LIMIT and not self._closed

    def on_pause(self, resume: Callable[[], None]) -> None:
        self._resume = resume

    # --- the transfer ---------------------------------------------------------------------------
    async def _run(self, fetch: Fetch, request: UpstreamRequest) -> None:
        try:
            response = await fetch(request, self)
            if not self.head.done():
                self.head.set_result(FillHead(response, len(response.body)))
            elif self.size is not None and self._received != self.size:
                raise SizeMismatch(self.registry, self.size, self._received)
            elif self.expected.verifiable and Digest("sha256", self._hash.hexdigest()) != self.expected:
                metrics.VERIFICATION_FAILURES.labels(metrics.registry_label(self.registry), "digest").inc()
                raise DigestMismatch(self.registry, str(self.expected), f"sha256:{self._hash.hexdigest()}")
        except RegcacheError as exc:
            self.error = exc
            if not self.head.done():
                self.head.set_exception(exc)
                self.head.exception()
            elif not self._closed:
                log.warning("pass-through of %s from %s: %s", self.expected, self.registry, exc)
        except Exception as exc:  # a task boundary: the client's stream is cut, never left hanging
            log.exception("pass-through of %s from %s failed", self.expected, self.registry)
            self.error = RegcacheError(str(exc))
            if not self.head.done():
                self.head.set_exception(self.error)
                self.head.exception()
        finally:
            self._done = True
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # --- the reader -----------------------------------------------------------------------------
    async def read(self) -> bytes | None:
        """The next bytes for the client; None at the verified end; raises if the download failed.

        Until the download has ended and verified, one byte is held back.
        """
        while True:
            if self.error is not None:
                raise self.error
            if self._done:
                if not self._chunks:
                    return None
                return self._take(len(self._chunks[0]))
            if self._buffered > 1:
                first = len(self._chunks[0])
                return self._take(first if first < self._buffered else first - 1)
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter

    def _take(self, length: int) -> bytes:
        chunk = self._chunks.popleft()
        if length < len(chunk):
            self._chunks.appendleft(chunk[length:])
            chunk = chunk[:length]
        self._buffered -= len(chunk)
        self._maybe_resume()
        return chunk

    def _maybe_resume(self) -> None:
        if self._resume is not None and not self.full:
            resume, self._resume = self._resume, None
            resume()

    def close(self) -> None:
        """The client is gone (or done): stop the upstream transfer if it is still running."""
        self._closed = True
        self._chunks.clear()
        self._buffered = 0
        self._maybe_resume()  # a paused transfer must run to notice it is abandoned
