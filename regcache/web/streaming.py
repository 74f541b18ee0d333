"""Sending a body: one loop for every source, as Tornado's StaticFileHandler does it.

A chunk is written and flushed before the next is read, so a slow client holds one chunk of
memory, never the object. A source whose bytes are in a local file (a stored blob, a download in
flight) goes from the page cache to the socket with `os.sendfile` instead: no copy through
Python. A client that takes no byte for --client-idle-timeout is disconnected (a reader that
stalls for ever must not hold a connection, a descriptor and a download's reader slot); a slow
one that keeps taking bytes is not.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
from datetime import timedelta

from tornado import gen
from tornado.iostream import IOStream, StreamClosedError
from tornado.web import RequestHandler

from regcache import metrics
from regcache.errors import RegcacheError
from regcache.storage.base import ByteSource, FileBacked

log = logging.getLogger(__name__)

# Bodies at least this large go out with sendfile (on a connection closed after them); smaller
# ones are written through Tornado and keep the connection alive.
SENDFILE_MIN = 1 << 20
# struct tcp_info: tcpi_bytes_acked, the bytes the client has taken (Linux 4.1+).
_TCPI_BYTES_ACKED = struct.Struct("=Q")
_TCPI_BYTES_ACKED_OFFSET = 120


class BodyWriter(RequestHandler):
    """The sending half of a handler; `idle_timeout` is set by its subclass."""

    idle_timeout: float
    body_bytes = 0
    aborted = False
    _sending: asyncio.Future[int] | None = None

    def abort_connection(self) -> None:
        """End a response that cannot be completed truthfully: the client sees a broken stream."""
        self.aborted = True
        self.request.connection.stream.close()

    def on_connection_close(self) -> None:
        if self._sending is not None:
            self._sending.cancel()
        super().on_connection_close()

    async def send_source(self, source: ByteSource, start: int, end: int | None, label: str) -> None:
        """The bytes [start, end) of `source` after the headers; a source that fails mid-way
        ends the connection, never a complete-looking body."""
        sendfile = (
            end is not None
            and end - start >= SENDFILE_MIN
            and isinstance(source, FileBacked)
            and type(self.request.connection.stream) is IOStream
        )
        if sendfile:
            self.set_header("Connection", "close")
        try:
            await self.flush()  # headers go out now: containerd gives up on a mirror whose headers lag
        except StreamClosedError:
            return
        if sendfile:
            assert end is not None and isinstance(source, FileBacked)
            await self._sendfile(source, start, end, label)
            return
        try:
            async for chunk in source.chunks(start, end):
                if not await self.send_chunk(chunk):
                    return
                metrics.SERVED_BYTES.labels(label).inc(len(chunk))
        except (OSError, RegcacheError) as exc:
            log.info("%s %s: %s; closing", self.request.method, self.request.path, exc)
            self.abort_connection()

    async def send_chunk(self, chunk: bytes) -> bool:
        """Write and flush one chunk; False when the client has gone (or was disconnected)."""
        self.write(chunk)
        flushed = self.flush()
        sock = self.request.connection.stream.socket
        taken = _bytes_taken(sock)
        while True:
            try:
                await gen.with_timeout(
                    timedelta(seconds=self.idle_timeout), flushed, quiet_exceptions=StreamClosedError
                )
                break
            except StreamClosedError:
                return False
            except gen.TimeoutError:
                now_taken = _bytes_taken(sock)
                if now_taken is None or now_taken == taken:
                    self._idle_close()
                    return False
                taken = now_taken
        self.body_bytes += len(chunk)
        return True

    def _idle_close(self) -> None:
        log.info(
            "%s %s: client took no byte for %.0fs; closing", self.request.method, self.request.path, self.idle_timeout
        )
        self.abort_connection()

    async def _sendfile(self, source: FileBacked, start: int, end: int, label: str) -> None:
        """The range goes out with sendfile as the file has it (waiting for a download's bytes).

        The body bypasses Tornado's stream, which therefore cannot keep the connection alive
        after it: the response says `Connection: close` (set by the caller) and the stream is
        closed once the body is out. The loop watches the socket for writability under its
        descriptor number; Tornado closes its own descriptor when the client leaves, and a new
        connection may get the same number before a cancellation unregisters it, so the
        transfer runs on a duplicate that only this function closes.
        """
        stream = self.request.connection.stream
        sock = stream.socket.dup()
        position = start
        try:
            while position < end:
                try:
                    limit = await source.readable(position, end)
                except RegcacheError:
                    limit = position
                if limit <= position:
                    break
                wanted = limit - position
                sending = asyncio.ensure_future(_sendfile(sock, source.fileno(), position, wanted, self.idle_timeout))
                self._sending = sending
                try:
                    await asyncio.wait([sending])
                finally:
                    self._sending = None
                    if not sending.done():  # this handler was cancelled: stop the transfer first
                        sending.cancel()
                        await asyncio.wait([sending])
                if sending.cancelled():
                    return  # the client went away
                if sending.exception() is not None:
                    # Broken pipe, reset, a socket closed under us, or an idle client.
                    if isinstance(sending.exception(), TimeoutError):
                        self._idle_close()
                    break
                sent = sending.result()
                self.body_bytes += sent
                metrics.SERVED_BYTES.labels(label).inc(sent)
                position += sent
                if sent < wanted:
                    break  # the file is shorter than it was (removed or truncated from outside)
        finally:
            sock.close()
        if position < end:
            self.aborted = True
        if not stream.closed():
            stream.close()  # complete (Connection: close) or not: nothing more can follow


def _bytes_taken(sock: socket.socket | None) -> int | None:
    """How many bytes of this connection the client has acknowledged, if the kernel says."""
    if sock is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 192)
    except OSError:
        return None
    if len(info) < _TCPI_BYTES_ACKED_OFFSET + _TCPI_BYTES_ACKED.size:
        return None
    return _TCPI_BYTES_ACKED.unpack_from(info, _TCPI_BYTES_ACKED_OFFSET)[0]


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def _sendfile(sock: socket.socket, fd: int, offset: int, count: int, idle: float | None) -> int:
    """`os.sendfile` from `fd` at an explicit offset (the descriptor's own offset is never
    moved, so it may be shared with a writer) to a non-blocking socket; returns the bytes sent
    (fewer when the file ended early). TimeoutError when the client takes no byte for `idle`."""
    loop = asyncio.get_running_loop()
    target = sock.fileno()
    sent = 0
    while sent < count:
        try:
            done = os.sendfile(target, fd, offset + sent, count - sent)
        except BlockingIOError:
            writable: asyncio.Future[None] = loop.create_future()
            loop.add_writer(target, _wake, writable)
            try:
                await asyncio.wait_for(writable, idle)
            finally:
                loop.remove_writer(target)
            continue
        if done == 0:
            break  # the file is shorter than it was
        sent += done
    return sent
