"""The transport: one HTTP exchange with a registry, performed by libcurl in a worker thread.

Receiving a large body on the event loop costs a wake-up per chunk curl hands over (16 KiB over
TLS): on two cores that, not sha256, was the ceiling of a cold pull. Here a pycurl easy handle
performs in a thread of its own, its streaming callback gathers what it receives into 1 MiB
chunks and hands each to the loop, which only does bookkeeping: about a thousand wake-ups per
GiB. A reader that falls behind blocks the thread (bounded memory, no pause/resume dance). Every
libcurl setting lives here: the proxy decided per URL (proxy.py) and its CONNECT answer kept out
of the registry's, the CA bundle, the addresses the guard pinned (CURLOPT_RESOLVE, against DNS
rebinding), the connect and idle timeouts, and no Accept-Encoding (stored bytes must be the
bytes the digest names). Handles are reused, and with them their connections.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor

import pycurl
from tornado.httputil import HTTPHeaders

from regcache import __version__, metrics
from regcache.errors import UpstreamError
from regcache.upstream.proxy import origin_of, proxy_for, redact

log = logging.getLogger(__name__)

USER_AGENT = f"regcache/{__version__}"
CHUNK = 1 << 20
# Chunks handed to the loop and not yet taken, before the receiving thread waits.
IN_FLIGHT = 2
RECEIVE_BUFFER = 256 * 1024
CONNECT_TIMEOUT = 5.0
# CURLOPT_SUPPRESS_CONNECT_HEADERS (libcurl 7.54+); not every pycurl build names it.
SUPPRESS_CONNECT_HEADERS = getattr(pycurl, "SUPPRESS_CONNECT_HEADERS", 265)
_END = b""


class Exchange:
    """One request and its answer: headers first, then the body, pulled by the loop."""

    def __init__(self, registry: str, method: str, url: str, loop: asyncio.AbstractEventLoop) -> None:
        self.registry, self.method, self.url = registry, method, url
        self.status = 0
        self.headers = HTTPHeaders()
        self.size: int | None = None
        self.received = 0
        self.head: asyncio.Future[None] = loop.create_future()
        self._loop = loop
        self._lines: list[str] = []
        self._pieces: list[bytes] = []
        self._gathered = 0
        self._chunks: asyncio.Queue[bytes] = asyncio.Queue()
        self._credits = threading.Semaphore(IN_FLIGHT)
        self._abandoned = False
        self._error: UpstreamError | None = None
        self._started = time.monotonic()

    # --- the worker thread's side ---------------------------------------------------------------
    def header_line(self, raw: bytes) -> None:
        line = raw.decode("latin-1")
        if self.head.done() or self._abandoned:
            return
        if line.startswith("HTTP/"):
            self._lines = [line]
        elif line in ("\r\n", "\n"):
            self._end_of_headers()
        else:
            self._lines.append(line)

    def _end_of_headers(self) -> None:
        if not self._lines:
            return
        first, *rest = self._lines
        status = int(first.split(" ", 2)[1])
        self._lines = []
        if 100 <= status < 200:
            return  # an interim answer (100 Continue, 103 Early Hints): the real one follows
        headers = HTTPHeaders()
        for line in rest:
            headers.parse_line(line)
        self._loop.call_soon_threadsafe(self._headers_known, status, headers)

    def data(self, piece: bytes) -> int | None:
        """curl's streaming callback: gather into chunks; 0 (abort) once nobody wants them."""
        if self._abandoned:
            return 0
        self.received += len(piece)
        self._pieces.append(piece)
        self._gathered += len(piece)
        if self._gathered >= CHUNK:
            return self._hand_over()
        return None

    def _hand_over(self) -> int | None:
        chunk = self._pieces[0] if len(self._pieces) == 1 else b"".join(self._pieces)
        self._pieces, self._gathered = [], 0
        while not self._credits.acquire(timeout=0.25):
            if self._abandoned:
                return 0
        self._loop.call_soon_threadsafe(self._chunks.put_nowait, chunk)
        return None

    def progress(self, *_counts: int) -> int:
        """curl's progress callback: a nonzero answer stops a transfer nobody wants (a stall)."""
        return 1 if self._abandoned else 0

    def perform(self, curl: pycurl.Curl) -> None:
        """Runs in the worker thread until the body has been handed over whole, or failed."""
        error: pycurl.error | None = None
        try:
            curl.perform()
        except pycurl.error as exc:
            error = exc
        # What arrived before a failure is good as far as it goes: a resume continues after it.
        if self._pieces and self._hand_over() == 0 and error is None:
            error = pycurl.error(pycurl.E_WRITE_ERROR, "abandoned")
        self._loop.call_soon_threadsafe(self._finished, error)

    # --- the loop's side ------------------------------------------------------------------------
    def _headers_known(self, status: int, headers: HTTPHeaders) -> None:
        if self.head.done():
            return
        self.status, self.headers = status, headers
        length = headers.get("Content-Length")
        self.size = int(length) if length and length.isdigit() else None
        label = metrics.registry_label(self.registry)
        metrics.UPSTREAM_REQUESTS.labels(label, str(status)).inc()
        metrics.UPSTREAM_LATENCY.labels(label).observe(time.monotonic() - self._started)
        if status == 429 or status >= 500:
            log.warning("upstream %s: %s %s answered %d", self.registry, self.method, redact(self.url), status)
        self.head.set_result(None)

    def _finished(self, error: pycurl.error | None) -> None:
        metrics.UPSTREAM_BYTES.labels(metrics.registry_label(self.registry)).inc(self.received)
        if error is not None and not self._abandoned:
            reason = error.args[1] if len(error.args) > 1 else str(error)
            failure = UpstreamError(self.registry, f"{self.method} {origin_of(self.url)}: {reason}")
            if not self.head.done():
                metrics.UPSTREAM_REQUESTS.labels(metrics.registry_label(self.registry), "error").inc()
                self.head.set_exception(failure)
                self.head.exception()
            self._error = failure
        log.debug("upstream %s %s -> %d (%d bytes)", self.method, redact(self.url), self.status, self.received)
        self._chunks.put_nowait(_END)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, in chunks of about 1 MiB; raises if the transfer broke off."""
        while True:
            chunk = await self._chunks.get()
            if chunk is _END:
                self._chunks.put_nowait(_END)  # later calls end at once too
                if self._error is not None:
                    raise self._error
                return
            self._credits.release()
            yield chunk

    async def read(self, limit: int) -> tuple[bytes, bool]:
        """The whole body, up to `limit` bytes; True when there was more (the rest is dropped)."""
        body = bytearray()
        async for chunk in self.chunks():
            if len(body) + len(chunk) > limit:
                body += chunk[: limit - len(body)]
                await self.aclose()
                return bytes(body), True
            body += chunk
        return bytes(body), False

    async def aclose(self) -> None:
        """Done with it: a transfer still running is stopped, its thread released."""
        self.abandon()

    def abandon(self) -> None:
        self._abandoned = True
        self._credits.release()


class CurlTransport:
    """Performs exchanges in its worker threads; create it in the loop, close it at shutdown."""

    def __init__(self, ca_bundle: str | None, idle_timeout: float, threads: int) -> None:
        self._ca_bundle = ca_bundle
        self._idle_timeout = idle_timeout
        self._threads = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="regcache-upstream")
        self._idle: list[pycurl.Curl] = []
        self._live: weakref.WeakSet[Exchange] = weakref.WeakSet()
        self._lock = threading.Lock()

    def close(self) -> None:
        """Stop every transfer still running (within a second: the progress callback sees it),
        so that no thread holds the process up at exit."""
        for exchange in list(self._live):
            exchange.abandon()
        self._threads.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            for curl in self._idle:
                curl.close()
            self._idle.clear()

    async def exchange(
        self,
        registry: str,
        method: str,
        url: str,
        headers: Mapping[str, str],
        pins: list[str],
        timeout: float | None = None,
    ) -> Exchange:
        """Send a request; returns once its answer's headers are in (UpstreamError if none)."""
        loop = asyncio.get_running_loop()
        exchange = Exchange(registry, method, url, loop)
        self._live.add(exchange)
        curl = self._handle()
        self._configure(curl, exchange, headers, pins)
        if timeout is not None:
            curl.setopt(pycurl.TIMEOUT_MS, int(1000 * timeout))
        done = loop.run_in_executor(self._threads, self._run, curl, exchange)
        await asyncio.wait([exchange.head, done], return_when=asyncio.FIRST_COMPLETED)
        if not exchange.head.done():  # the thread ended without calling back: a bug, said as such
            done.result()
            raise UpstreamError(registry, f"{method} {origin_of(url)}: the transfer ended without an answer")
        await exchange.head  # raises when the transfer ended without an answer
        return exchange

    def _run(self, curl: pycurl.Curl, exchange: Exchange) -> None:
        try:
            exchange.perform(curl)
        finally:
            curl.reset()
            with self._lock:
                self._idle.append(curl)

    def _handle(self) -> pycurl.Curl:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return pycurl.Curl()

    def _configure(self, curl: pycurl.Curl, exchange: Exchange, headers: Mapping[str, str], pins: list[str]) -> None:
        url = exchange.url
        sent = {"User-Agent": USER_AGENT, **headers}
        curl.setopt(pycurl.URL, url)
        curl.setopt(pycurl.HTTPHEADER, [f"{name}: {value}" for name, value in sent.items()])
        if exchange.method == "HEAD":
            curl.setopt(pycurl.NOBODY, 1)
        curl.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1)
        curl.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
        curl.setopt(pycurl.FOLLOWLOCATION, 0)  # followed by the client, never with credentials
        curl.setopt(pycurl.NOSIGNAL, 1)
        curl.setopt(pycurl.CONNECTTIMEOUT_MS, int(1000 * CONNECT_TIMEOUT))
        # Abandoned when no byte arrives for the idle timeout (averaged by curl over a few seconds).
        curl.setopt(pycurl.LOW_SPEED_LIMIT, 1)
        curl.setopt(pycurl.LOW_SPEED_TIME, max(1, int(self._idle_timeout)))
        curl.setopt(pycurl.BUFFERSIZE, RECEIVE_BUFFER)
        curl.setopt(pycurl.ENCODING, None)
        # Connect only to the addresses the guard checked.
        curl.setopt(pycurl.RESOLVE, pins)
        proxy = proxy_for(url)
        curl.setopt(pycurl.PROXY, proxy or "")
        if proxy:
            # The proxy's "200 Connection established" must not pass for the registry's answer.
            curl.setopt(SUPPRESS_CONNECT_HEADERS, 1)
        if self._ca_bundle:
            curl.setopt(pycurl.CAINFO, self._ca_bundle)
        curl.setopt(pycurl.HEADERFUNCTION, exchange.header_line)
        curl.setopt(pycurl.WRITEFUNCTION, exchange.data)
        curl.setopt(pycurl.NOPROGRESS, 0)
        curl.setopt(pycurl.XFERINFOFUNCTION, exchange.progress)
