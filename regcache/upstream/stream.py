"""A 2xx answer whose body is still arriving, pulled chunk by chunk.

The transport pushes what it receives into a small buffer; the reader pulls joined chunks out of
it. When the reader falls behind (a slow client of a pass-through), the transfer is paused, not
buffered, so memory stays bounded; closing the stream abandons the transfer.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable

from tornado.httputil import HTTPHeaders

from regcache.errors import RegcacheError

# Bytes held for the reader before the transfer is paused, and handed over in one piece at most.
BUFFER_LIMIT = 1 << 20


class UpstreamStream:
    def __init__(self) -> None:
        self.status = 0
        self.headers = HTTPHeaders()
        self.size: int | None = None
        self.head: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._done = False
        self._closed = False
        self._error: RegcacheError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._resume: Callable[[], None] | None = None

    # --- the transport's side (its Sink) -------------------------------------------------------
    def on_headers(self, status: int, headers: HTTPHeaders) -> bool:
        self.status, self.headers = status, headers
        length = headers.get("Content-Length")
        self.size = int(length) if length and length.isdigit() else None
        if not self.head.done():
            self.head.set_result(None)
        return True

    def on_chunk(self, chunk: bytes) -> None:
        if self._closed:
            return
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        self._wake()

    @property
    def abandoned(self) -> bool:
        return self._closed

    @property
    def full(self) -> bool:
        return self._buffered >= BUFFER_LIMIT and not self._closed

    def on_pause(self, resume: Callable[[], None]) -> None:
        self._resume = resume

    def finish(self, error: RegcacheError | None = None) -> None:
        """The transfer ended: completely, or with `error`."""
        self._done = True
        self._error = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _maybe_resume(self) -> None:
        if self._resume is not None and (self._buffered < BUFFER_LIMIT // 2 or self._closed):
            resume, self._resume = self._resume, None
            resume()

    # --- the reader's side ----------------------------------------------------------------------
    async def chunks(self) -> AsyncIterator[bytes]:
        """What has arrived, joined into chunks of up to BUFFER_LIMIT; raises if the transfer
        broke off."""
        while True:
            if self._chunks:
                taken = [self._chunks.popleft()]
                size = len(taken[0])
                while self._chunks and size + len(self._chunks[0]) <= BUFFER_LIMIT:
                    taken.append(self._chunks.popleft())
                    size += len(taken[-1])
                self._buffered -= size
                self._maybe_resume()
                yield taken[0] if len(taken) == 1 else b"".join(taken)
                continue
            if self._error is not None:
                raise self._error
            if self._done:
                return
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter

    async def aclose(self) -> None:
        """Done with it: a transfer still running is stopped."""
        self._closed = True
        self._chunks.clear()
        self._buffered = 0
        self._maybe_resume()  # a paused transfer must run to notice it is abandoned
