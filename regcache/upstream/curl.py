"""The transport: Tornado's curl client, and every quirk of it and of libcurl, in one place.

Chosen over the simple client because it honours forward proxies (the simple one has none) and
aborts a stalled transfer natively (LOW_SPEED_TIME), while a 1 MiB receive buffer keeps its
per-chunk Python work small. Its pitfalls are handled here: header lines arrive through
callbacks that may trail small bodies, so body chunks are held until the final header block is
complete; it logs request headers at DEBUG, so its logger is kept at INFO; its environment
proxy handling is replaced by an explicit decision per URL (proxy.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Protocol

import pycurl
from tornado.curl_httpclient import CurlAsyncHTTPClient
from tornado.httpclient import HTTPRequest, HTTPResponse
from tornado.httputil import HTTPHeaders

from regcache import __version__, metrics
from regcache.errors import RegcacheError, UpstreamError
from regcache.upstream.proxy import origin_of, proxy_for, redact

log = logging.getLogger(__name__)

RECEIVE_BUFFER = 1 << 20
# CURLOPT_SUPPRESS_CONNECT_HEADERS (libcurl 7.54+); not every pycurl build names it.
SUPPRESS_CONNECT_HEADERS = getattr(pycurl, "SUPPRESS_CONNECT_HEADERS", 265)
USER_AGENT = f"regcache/{__version__}"


class Sink(Protocol):
    """Receives a successful response's body as it streams (upstream/stream.py).

    `on_headers`/`on_chunk` may raise a RegcacheError to abandon the transfer (the connection is
    closed at once); `full` pauses it and `on_pause(resume)` hands over what continues it.
    """

    def on_headers(self, status: int, headers: HTTPHeaders) -> bool: ...

    def on_chunk(self, chunk: bytes) -> None: ...

    @property
    def abandoned(self) -> bool: ...

    @property
    def full(self) -> bool: ...

    def on_pause(self, resume: Callable[[], None]) -> None: ...


class Attempt:
    """Collects one HTTP exchange: header lines as they come, then the body, streamed or held."""

    def __init__(
        self, sink: Sink | None, decide_final: Callable[[int, HTTPHeaders], bool], buffered_limit: int
    ) -> None:
        self._sink = sink
        self._decide_final = decide_final
        self._limit = buffered_limit
        self._lines: list[str] = []
        self._pending: list[bytes] = []
        self.status = 0
        self.headers = HTTPHeaders()
        self.headers_done = False
        self.streaming = False
        self.final = False
        self.body = bytearray()
        self.truncated = False
        self.received = 0
        self.headers_at: float | None = None
        self.error: RegcacheError | None = None
        self.finished = False
        self._paused_curl: pycurl.Curl | None = None
        self.kick: Callable[[], None] = lambda: None

    def should_stop(self) -> bool:
        """Whether the transfer should be cut off now (checked by curl's write callback)."""
        if self.error is not None or self.truncated:
            return True
        return self.streaming and self._sink is not None and self._sink.abandoned

    def should_pause(self) -> bool:
        """Whether the sink's reader has fallen behind (checked by curl's write callback)."""
        return self.streaming and self._sink is not None and self._sink.full

    def paused(self, curl: pycurl.Curl) -> None:
        self._paused_curl = curl
        self._sink.on_pause(self.resume)

    def resume(self) -> None:
        """Continue a paused transfer (called by the sink once its reader has caught up)."""
        curl, self._paused_curl = self._paused_curl, None
        if curl is None or self.finished:
            return
        try:
            curl.pause(pycurl.PAUSE_CONT)  # may call the write callback again, at once
        except pycurl.error:
            return  # the transfer failed while paused; the fetch reports it
        self.kick()

    def header_line(self, line: str) -> None:
        if self.headers_done:
            return
        if line.startswith("HTTP/"):
            self._lines = [line]
            return
        if line in ("\r\n", "\n"):
            self._finish_headers()
            return
        self._lines.append(line)

    def _finish_headers(self) -> None:
        if not self._lines:
            return
        first, *rest = self._lines
        status = int(first.split(" ", 2)[1])
        if 100 <= status < 200:
            # An interim answer (100 Continue, 103 Early Hints): the real one follows.
            self._lines = []
            return
        headers = HTTPHeaders()
        for line in rest:
            headers.parse_line(line)
        self._headers_known(status, headers)

    def _headers_known(self, status: int, headers: HTTPHeaders) -> None:
        self.status = status
        self.headers = headers
        self.headers_done = True
        self.headers_at = time.monotonic()
        self.final = self._decide_final(status, headers)
        if self.final and self._sink is not None and 200 <= status < 300:
            try:
                self.streaming = self._sink.on_headers(status, headers)
            except RegcacheError as exc:
                self.error = exc
        pending, self._pending = self._pending, []
        for chunk in pending:
            self._deliver(chunk)

    def chunk(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if not self.headers_done:
            self._pending.append(chunk)
            return
        self._deliver(chunk)

    def _deliver(self, chunk: bytes) -> None:
        if self.error is not None or self.truncated:
            return
        if self.streaming:
            try:
                self._sink.on_chunk(chunk)
            except RegcacheError as exc:
                self.error = exc
        elif len(self.body) + len(chunk) <= self._limit:
            self.body += chunk
        else:
            # Over the limit: keep what fits, drop the rest, and stop the transfer.
            self.truncated = True

    def complete(self, response: HTTPResponse) -> None:
        """Called when the transfer ends: fills in what the callbacks may not have delivered."""
        if not self.headers_done and response.code != 599:
            headers = HTTPHeaders()
            for name, value in response.headers.get_all():
                if name != "X-Http-Reason":  # Tornado's, not the registry's
                    headers.add(name, value)
            self._headers_known(response.code, headers)


class CurlTransport:
    """Owns the curl client; create it inside the running event loop, close it at shutdown."""

    def __init__(self, ca_bundle: str | None, connect_timeout: float, idle_timeout: float) -> None:
        self._ca_bundle = ca_bundle
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        self._http = CurlAsyncHTTPClient(force_instance=True, max_clients=256, max_body_size=1 << 50)
        # Its DEBUG output includes request headers, Authorization among them.
        logging.getLogger("tornado.curl_httpclient").setLevel(logging.INFO)

    def close(self) -> None:
        self._http.close()

    async def send(
        self,
        registry: str,
        method: str,
        url: str,
        headers: Mapping[str, str],
        authorization: str | None,
        attempt: Attempt,
        pins: list[str],
    ) -> None:
        send_headers = HTTPHeaders({"User-Agent": USER_AGENT})
        for name, value in headers.items():
            send_headers[name] = value
        if authorization:
            send_headers["Authorization"] = authorization
        proxy = proxy_for(url)
        http_request = HTTPRequest(
            url,
            method=method,
            headers=send_headers,
            follow_redirects=False,
            decompress_response=False,
            connect_timeout=self._connect_timeout,
            request_timeout=0,
            header_callback=attempt.header_line,
            streaming_callback=attempt.chunk,
            ca_certs=self._ca_bundle,
            prepare_curl_callback=lambda curl: self._prepare_curl(curl, proxy, pins, attempt),
        )
        label = metrics.registry_label(registry)
        started = time.monotonic()
        failure: Exception | None = None
        try:
            # Tornado raises for transport failures (599) even with raise_error=False.
            attempt.complete(await self._http.fetch(http_request, raise_error=False))
        except Exception as exc:  # noqa: BLE001 - every transport failure becomes an UpstreamError
            failure = exc
        finally:
            attempt.finished = True
        metrics.UPSTREAM_BYTES.labels(label).inc(attempt.received)
        # A transfer we cut off ourselves (a sink's error, a body past its limit) is not a failure
        # of the upstream's.
        cut_off = attempt.headers_done and (attempt.error is not None or attempt.truncated)
        if not cut_off and (failure is not None or not attempt.headers_done):
            metrics.UPSTREAM_REQUESTS.labels(label, "error").inc()
            reason = str(failure) if failure is not None else "no response"
            raise UpstreamError(registry, f"{method} {origin_of(url)}: {reason}") from failure
        metrics.UPSTREAM_REQUESTS.labels(label, str(attempt.status)).inc()
        if attempt.headers_at is not None:
            metrics.UPSTREAM_LATENCY.labels(label).observe(attempt.headers_at - started)
        if attempt.status == 429 or attempt.status >= 500:
            log.warning("upstream %s: %s %s answered %d", registry, method, redact(url), attempt.status)
        else:
            log.debug("upstream %s %s -> %d (%d bytes)", method, redact(url), attempt.status, attempt.received)
        if attempt.error is not None:
            raise attempt.error

    def _prepare_curl(
        self, curl: pycurl.Curl, proxy: str | None, pins: list[str], attempt: Attempt | None = None
    ) -> None:
        curl.setopt(pycurl.PROXY, proxy or "")
        # Connect only to the addresses the guard checked (handles are reused: always set).
        curl.setopt(pycurl.RESOLVE, pins)
        info = getattr(curl, "info", None)
        buffer = info.get("streaming_buffer") if isinstance(info, dict) else None
        if attempt is not None and buffer is not None:
            # Tornado's streaming write function, wrapped so that we can cut a transfer off:
            # writing nothing makes libcurl fail it (CURLE_WRITE_ERROR) and close the connection.
            write = buffer.write

            def write_chunk(chunk: bytes) -> int:
                if attempt.should_stop():
                    return 0
                if attempt.should_pause():
                    # curl keeps the chunk and hands it over again when resumed.
                    attempt.paused(curl)
                    return pycurl.WRITEFUNC_PAUSE
                return write(chunk)

            curl.setopt(pycurl.WRITEFUNCTION, write_chunk)
            # Resumed transfers need a socket_action to make progress (as Tornado's own pause does).
            attempt.kick = lambda: getattr(self._http, "_set_timeout", lambda _delay: None)(0)
        if proxy:
            # The proxy's "200 Connection established" must not pass for the registry's answer.
            curl.setopt(SUPPRESS_CONNECT_HEADERS, 1)
        curl.setopt(pycurl.BUFFERSIZE, RECEIVE_BUFFER)
        curl.setopt(pycurl.LOW_SPEED_LIMIT, 1)
        curl.setopt(pycurl.LOW_SPEED_TIME, max(1, int(self._idle_timeout)))
        # No Accept-Encoding: stored bytes must be the bytes the digest names.
        curl.setopt(pycurl.ENCODING, None)

    async def get_token(self, url: str, authorization: str, pins: list[str]) -> tuple[int, bytes, str]:
        """A token realm's answer: status, body, and the transport error (status 599) if any."""
        proxy = proxy_for(url)
        http_request = HTTPRequest(
            url,
            headers={"Authorization": authorization, "User-Agent": USER_AGENT},
            follow_redirects=False,
            connect_timeout=self._connect_timeout,
            request_timeout=30,
            ca_certs=self._ca_bundle,
            prepare_curl_callback=lambda curl: self._prepare_curl(curl, proxy, pins),
        )
        response = await self._http.fetch(http_request, raise_error=False)
        return response.code, response.body or b"", str(response.error or "")
