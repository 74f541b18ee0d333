"""The HTTP server, and a plain-HTTP port's answer to clients that try TLS first.

podman, CRI-O, skopeo and buildah (containers/image) reach an `insecure = true` mirror by trying
https:// first and plain http:// only when that fails. Sent to a plain-HTTP server, their TLS
ClientHello holds no end of an HTTP header, so Tornado waits for one and the client gives up
only after its 10-second TLS handshake timeout: every pull would stall for 10 s. A connection
whose first bytes are a TLS handshake record is closed at once instead, and the client turns to
http:// without waiting.
"""

from __future__ import annotations

import asyncio
import socket

from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream

# A TLS record: content type 22 (handshake), then protocol major version 3.
TLS_HANDSHAKE_PREFIX = b"\x16\x03"


class PlainHTTPServer(HTTPServer):
    """An HTTPServer that hangs up on TLS handshakes rather than waiting for a header."""

    async def handle_stream(self, stream: IOStream, address: tuple) -> None:  # type: ignore[override]
        try:
            first = await _peek(stream.socket, len(TLS_HANDSHAKE_PREFIX), self.conn_params.header_timeout)
        except asyncio.CancelledError:
            # Shutdown while the client had sent nothing yet: this task is the connection's only owner.
            stream.close()
            return
        if first is None or first.startswith(TLS_HANDSHAKE_PREFIX):
            stream.close()  # silent for the whole header timeout, as Tornado would, or TLS
            return
        super().handle_stream(stream, address)


async def _peek(sock: socket.socket, size: int, timeout: float | None) -> bytes | None:
    """The first bytes the client sent, left in the socket for Tornado to read; None when it
    sent nothing within the timeout, b"" when it closed the connection."""
    readable: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    loop = IOLoop.current()

    def ready(fd: int, events: int) -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_handler(sock.fileno(), ready, IOLoop.READ)
    try:
        await asyncio.wait_for(readable, timeout)
    except TimeoutError:
        return None
    finally:
        # Before Tornado's stream registers the descriptor for its own reads.
        loop.remove_handler(sock.fileno())
    try:
        return sock.recv(size, socket.MSG_PEEK)
    except OSError:
        return b""
