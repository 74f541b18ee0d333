"""A small in-process upstream for failures a real registry cannot produce on demand.

It lies about digests, cuts bodies short, stalls, drops connections and throttles, so the tests
can check that regcache stores nothing wrong and never hands a client a complete-looking bad body.
Everything a real registry can do is tested against the real one instead.
"""

from __future__ import annotations

import enum
import hashlib
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Behaviour = Callable[["FakeHandler"], None]


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


class FakeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass

    def _dispatch(self) -> None:
        path = self.path.split("?", 1)[0]
        self.server.owner.seen.append(Seen(self.command, path, dict(self.headers.items())))
        behaviour = self.server.owner.routes.get(path)
        if behaviour is None:
            self.send_json(404, b'{"errors":[{"code":"NAME_UNKNOWN","message":"no route in fake"}]}')
            return
        behaviour(self)

    do_GET = _dispatch
    do_HEAD = _dispatch

    # --- building blocks for behaviours ---------------------------------------------------------
    def send_json(self, status: int, body: bytes, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_head(self, length: int, content_type: str = "application/octet-stream", **headers: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()

    def drop(self) -> None:
        """Close the TCP connection at once (RST), as a crashed upstream would."""
        self.wfile.flush()
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        self.connection.close()
        self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: FakeUpstream


@dataclass
class FakeUpstream:
    """Routes are exact paths (no query) to behaviours; every request is recorded in `seen`."""

    routes: dict[str, Behaviour] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._server = _Server(("127.0.0.1", 0), FakeHandler)
        self._server.owner = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def ns(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.ns}"

    def upstream_arg(self) -> list[str]:
        return ["--upstream", f"{self.ns}={self.url}"]

    def count(self, path: str, method: str = "GET") -> int:
        return sum(1 for s in self.seen if s.path == path and s.method == method)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- behaviours -----------------------------------------------------------------------------------
def serve(data: bytes, content_type: str = "application/octet-stream", **headers: str) -> Behaviour:
    def behaviour(h: FakeHandler) -> None:
        h.send_head(len(data), content_type, **headers)
        if h.command != "HEAD":
            h.wfile.write(data)

    return behaviour


def serve_throttled(data: bytes, seconds: float, pieces: int = 50) -> Behaviour:
    """The whole body, spread over `seconds`: slow enough for every client to join the download."""

    def behaviour(h: FakeHandler) -> None:
        h.send_head(len(data))
        step = max(1, len(data) // pieces)
        for start in range(0, len(data), step):
            h.wfile.write(data[start : start + step])
            h.wfile.flush()
            time.sleep(seconds / pieces)

    return behaviour


def truncate(data: bytes, keep: int) -> Behaviour:
    """Announce the full length, send `keep` bytes, then close cleanly (a short body)."""

    def behaviour(h: FakeHandler) -> None:
        h.send_head(len(data))
        h.wfile.write(data[:keep])
        h.wfile.flush()
        h.close_connection = True
        h.connection.shutdown(socket.SHUT_WR)

    return behaviour


def drop_after(data: bytes, keep: int) -> Behaviour:
    def behaviour(h: FakeHandler) -> None:
        h.send_head(len(data))
        h.wfile.write(data[:keep])
        h.drop()

    return behaviour


def stall_after(data: bytes, keep: int, release: threading.Event) -> Behaviour:
    """Send `keep` bytes and then nothing until `release` is set (or 60 s pass)."""

    def behaviour(h: FakeHandler) -> None:
        h.send_head(len(data))
        h.wfile.write(data[:keep])
        h.wfile.flush()
        release.wait(60)
        h.close_connection = True

    return behaviour


def drop_before_headers() -> Behaviour:
    def behaviour(h: FakeHandler) -> None:
        h.drop()

    return behaviour


def serve_ranges(data: bytes, breaks: list[int]) -> Behaviour:
    """A registry that honours `Range: bytes=N-` and whose connection breaks: the i-th request
    is cut off (RST) once the body reaches offset `breaks[i]`; requests past the list complete."""
    calls = iter(breaks)

    def behaviour(h: FakeHandler) -> None:
        cut = next(calls, None)
        start = 0
        header = h.headers.get("Range", "")
        if header.startswith("bytes=") and header.endswith("-"):
            start = int(header[len("bytes=") : -1])
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            h.send_response(200)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(len(data) - start))
        h.end_headers()
        if cut is None:
            h.wfile.write(data[start:])
            return
        h.wfile.write(data[start:cut])
        h.wfile.flush()
        time.sleep(0.2)  # let the bytes reach the client before the reset
        h.drop()

    return behaviour


class CuttingForwarder:
    """A TCP forwarder in front of a real server that breaks chosen connections: the i-th
    connection's answer is cut off (RST) after `cuts[i]` bytes; later connections pass whole.
    `requests` holds the request head of every connection, to see what was asked."""

    def __init__(self, target_port: int, cuts: list[int]) -> None:
        self._target = target_port
        self._cuts = list(cuts)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.requests: list[bytes] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                cut = self._cuts.pop(0) if self._cuts else None
            threading.Thread(target=self._serve, args=(client, cut), daemon=True).start()

    def _serve(self, client: socket.socket, cut: int | None) -> None:
        server = socket.create_connection(("127.0.0.1", self._target))
        threading.Thread(target=self._upward, args=(client, server), daemon=True).start()
        sent = 0
        try:
            while chunk := server.recv(1 << 16):
                if cut is not None and sent + len(chunk) >= cut:
                    client.sendall(chunk[: cut - sent])
                    time.sleep(0.2)
                    # shutdown wakes the thread reading the other way; close alone would not.
                    client.shutdown(socket.SHUT_RDWR)
                    break
                client.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass
        client.close()
        server.close()

    def _upward(self, client: socket.socket, server: socket.socket) -> None:
        try:
            while chunk := client.recv(1 << 16):
                with self._lock:
                    self.requests.append(chunk)
                server.sendall(chunk)
        except OSError:
            pass


class SwitchableForwarder:
    """A TCP forwarder in front of a real server that can be taken down (listener closed, every
    open connection reset) and brought back on the same port: a network outage of that server,
    without restarting it."""

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.port = 0
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port))
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        if self._listener is not None:
            # shutdown wakes the thread blocked in accept(); close alone leaves it listening.
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            for sock in self._open:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._open.clear()

    close = down

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self._target))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.update((client, server))
            threading.Thread(target=self._pipe, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(1 << 16):
                sink.sendall(chunk)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        with self._lock:
            self._open.discard(source)
            self._open.discard(sink)


# --- random faults, for the soak test -------------------------------------------------------------
class Fault(enum.Enum):
    """What one upstream answer does wrong (or not)."""

    GOOD = "good"
    WRONG_BYTES = "wrong-bytes"  # the announced length, one byte flipped (a stray byte when empty)
    SHORT_BODY = "short-body"  # Content-Length says more than is sent, then a clean close
    RESET = "reset"  # an RST part-way through the body
    STALL = "stall"  # silence part-way through the body, then an RST if regcache did not hang up first
    SERVER_ERROR = "5xx"  # a 500 or a 503 with a registry's JSON error body


class FaultInjector:
    """Serves blobs through FakeUpstream routes, each GET with a fault drawn at random.

    The draws are seeded per path and per request count on that path (`seed:path:n`), so one seed
    gives every blob the same sequence of answers however the threads interleave: a failing seed
    replays the same faults, if not the same timing. Each answer also honours `Range: bytes=N-`
    (206 with Content-Range) with probability `range_honoured`, else ignores it (200, whole body).
    Clear `faulty` to serve every later request good. `served` counts the faults as served: a cut
    of an empty body is a good answer.
    """

    def __init__(
        self,
        seed: int,
        weights: dict[Fault, float],
        range_honoured: float = 0.7,
        stall_seconds: tuple[float, float] = (0.5, 6.0),
    ) -> None:
        self.seed = seed
        self.weights = weights
        self.range_honoured = range_honoured
        self.stall_seconds = stall_seconds
        self.faulty = True
        self.served: Counter[Fault] = Counter()
        self.ranges_honoured = 0
        self._requests: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._released = threading.Event()

    def route(self, data: bytes, weights: dict[Fault, float] | None = None) -> Behaviour:
        """A behaviour serving `data`; `weights` overrides the injector's for this blob."""

        def behaviour(h: FakeHandler) -> None:
            with self._lock:
                number = self._requests[h.path]
                self._requests[h.path] += 1
            rng = random.Random(f"{self.seed}:{h.path}:{number}")
            table = weights if weights is not None else self.weights
            fault = rng.choices(list(table), list(table.values()))[0] if self.faulty else Fault.GOOD
            try:
                self._answer(h, data, fault, rng)
            except OSError:
                h.close_connection = True  # regcache hung up first: what a real server sees too

        return behaviour

    def release(self) -> None:
        """End every stall now (at the end of a test)."""
        self._released.set()

    def _count(self, fault: Fault, honoured: bool = False) -> None:
        with self._lock:
            self.served[fault] += 1
            self.ranges_honoured += honoured

    def _answer(self, h: FakeHandler, data: bytes, fault: Fault, rng: random.Random) -> None:
        if h.command == "HEAD":
            serve(data)(h)
            return
        if fault is Fault.SERVER_ERROR:
            self._count(fault)
            status = rng.choice([500, 503])
            h.send_json(status, b'{"errors":[{"code":"UNAVAILABLE","message":"injected fault"}]}')
            return
        start, honoured = 0, False
        header = h.headers.get("Range", "")
        if header.startswith("bytes=") and header.endswith("-") and rng.random() < self.range_honoured:
            start, honoured = int(header[len("bytes=") : -1]), True
        if start >= len(data) > 0:
            h.send_json(416, b'{"errors":[{"code":"RANGE_INVALID","message":"past the end"}]}')
            return
        body = data[start:]
        if fault is Fault.WRONG_BYTES:
            if body:
                flipped = bytearray(body)
                flipped[rng.randrange(len(body))] ^= 1 << rng.randrange(8)
                body = bytes(flipped)
            else:
                body = b"\x00"
        elif not body:
            fault = Fault.GOOD  # nothing to cut or stall in an empty body
        self._count(fault, honoured)
        h.send_response(206 if honoured else 200)
        if honoured:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if fault in (Fault.GOOD, Fault.WRONG_BYTES):
            h.wfile.write(body)
            return
        cut = rng.randrange(len(body))
        h.wfile.write(body[:cut])
        h.wfile.flush()
        if fault is Fault.SHORT_BODY:
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_WR)
        elif fault is Fault.RESET:
            h.drop()
        else:
            self._released.wait(rng.uniform(*self.stall_seconds))
            h.drop()
