"""The one upstream HTTP client: endpoints, TLS, proxies, redirects, authentication, streaming.

Built on Tornado's curl client, chosen over the simple client because it honours forward proxies
(the simple one has none) and aborts a stalled transfer natively (LOW_SPEED_TIME), while a 1 MiB
receive buffer keeps its per-chunk Python work small. Its pitfalls are handled here: header lines
arrive through callbacks that may trail small bodies, so body chunks are held until the final
header block is complete; it logs request headers at DEBUG, so its logger is kept at INFO; its
environment-variable proxy handling is replaced by an explicit decision per URL so that both
spellings of the variables behave the same.

Redirects are followed here, not by curl, so that an Authorization header never goes to another
origin (a CDN or a presigned S3 URL).
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pycurl
from tornado.curl_httpclient import CurlAsyncHTTPClient
from tornado.httpclient import HTTPRequest, HTTPResponse
from tornado.httputil import HTTPHeaders

from regcache import __version__, metrics
from regcache.config import Settings
from regcache.errors import RegcacheError, UpstreamError
from regcache.upstream.auth import Authenticator, TokenAnswer, TokenRequest
from regcache.upstream.guard import AddressGuard

log = logging.getLogger(__name__)

REDIRECT_STATUSES = frozenset((301, 302, 303, 307, 308))
MAX_REDIRECTS = 5
MAX_ERROR_BODY = 1 << 20
RECEIVE_BUFFER = 1 << 20
# CURLOPT_SUPPRESS_CONNECT_HEADERS (libcurl 7.54+); not every pycurl build names it.
SUPPRESS_CONNECT_HEADERS = getattr(pycurl, "SUPPRESS_CONNECT_HEADERS", 265)
USER_AGENT = f"regcache/{__version__}"
# Hop-by-hop and framing headers are the connection's business, not the content's.
_NOT_FORWARDED = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Content-Length",
        "Date",
        "Server",
        "Set-Cookie",
        "X-Http-Reason",
    )
)


@dataclass(frozen=True)
class UpstreamRequest:
    """One logical request to a registry; redirects and auth retries happen beneath it."""

    registry: str
    repo: str
    method: str
    path: str
    headers: Mapping[str, str] = field(default_factory=dict)
    client_authorization: str | None = field(default=None, repr=False)
    buffered_limit: int = MAX_ERROR_BODY


@dataclass
class UpstreamResponse:
    status: int
    headers: HTTPHeaders
    body: bytes = b""
    truncated: bool = False

    def forwardable_headers(self) -> list[tuple[str, str]]:
        return [(k, v) for k, v in self.headers.get_all() if k.lower() not in _NOT_FORWARDED]


class Sink(Protocol):
    """Receives a successful response's body as it streams, instead of it being buffered.

    Either method may raise a RegcacheError to abandon the transfer (the upstream connection is
    closed at once); `fetch` then raises that error.
    """

    def on_headers(self, status: int, headers: HTTPHeaders) -> bool:
        """Called once with the final 2xx answer; True to stream its body into on_chunk."""

    def on_chunk(self, chunk: bytes) -> None: ...

    @property
    def abandoned(self) -> bool:
        """True once the sink wants no more bytes (its own failure, e.g. a full disk)."""

    # Optional, for sinks that relay to a slower reader (cache/relay.py): `full` pauses the
    # transfer, and `on_pause(resume)` hands over the function that continues it.


class _Attempt:
    """Collects one HTTP exchange: header lines as they come, then the body, streamed or held."""

    def __init__(self, sink: Sink | None, decide_final, buffered_limit: int) -> None:
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
        return self.streaming and bool(getattr(self._sink, "full", False))

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


class UpstreamClient:
    """Owns the curl client; create it inside the running event loop, close it at shutdown."""

    def __init__(self, settings: Settings, idle_timeout: float = 60.0, connect_timeout: float = 5.0) -> None:
        self._settings = settings
        self._idle_timeout = idle_timeout
        self._connect_timeout = connect_timeout
        self._http = CurlAsyncHTTPClient(force_instance=True, max_clients=256, max_body_size=1 << 50)
        self._ca_bundle = _combined_ca_bundle(settings.upstream_ca) if settings.upstream_ca else None
        self._auth = Authenticator(settings.creds, self._fetch_token)
        self.guard = AddressGuard(settings)
        # Its DEBUG output includes request headers, Authorization among them.
        logging.getLogger("tornado.curl_httpclient").setLevel(logging.INFO)

    def close(self) -> None:
        self._http.close()
        if self._ca_bundle:
            Path(self._ca_bundle).unlink(missing_ok=True)

    def endpoint(self, registry: str) -> str:
        return self._settings.endpoint(registry)

    @property
    def private_registries(self) -> frozenset[str]:
        """Registries whose cached content is served only after the registry says yes."""
        return self._settings.private_registries

    async def fetch(self, request: UpstreamRequest, sink: Sink | None = None) -> UpstreamResponse:
        """Send a request, following redirects and answering auth challenges with our credentials.

        A 2xx body goes to `sink` when it asks for it; anything else is held (up to a limit) in
        the returned response so that it can be passed to the client unchanged.
        """
        self.guard.check_registry(request.registry)
        base = self.endpoint(request.registry)
        url = base + request.path
        origin = _origin(url)
        endpoint_host = urllib.parse.urlsplit(base).netloc
        creds = (
            None
            if request.client_authorization
            else self._auth.credentials(request.registry, endpoint_host, request.repo)
        )
        authorization = request.client_authorization
        if creds is not None:
            authorization = self._auth.cached_header(request.registry, request.repo)
        auth_retried = False
        redirects = 0
        method = request.method
        while True:
            same_origin = _origin(url) == origin
            send_auth = authorization if same_origin else None
            can_redirect = redirects < MAX_REDIRECTS
            can_authenticate = creds is not None and not auth_retried and same_origin

            def decide_final(
                status: int,
                headers: HTTPHeaders,
                can_redirect: bool = can_redirect,
                can_authenticate: bool = can_authenticate,
            ) -> bool:
                """Whether this answer is the one to act on, or one we follow or answer ourselves."""
                if status in REDIRECT_STATUSES and headers.get("Location") and can_redirect:
                    return False
                return not (status == 401 and can_authenticate)

            attempt = _Attempt(sink, decide_final, request.buffered_limit)
            pins = await self.guard.pin(request.registry, url, proxied=_proxy_for(url) is not None)
            # A sink may add headers: a fill resuming a broken download asks for a Range.
            headers = {**request.headers, **getattr(sink, "extra_headers", {})}
            await self._send(request.registry, method, url, headers, send_auth, attempt, pins)
            if not attempt.final:
                if attempt.status in REDIRECT_STATUSES:
                    redirects += 1
                    url = urllib.parse.urljoin(url, attempt.headers["Location"])
                    if attempt.status == 303 and method != "HEAD":
                        method = "GET"
                    continue
                # A 401 we can answer with configured credentials.
                auth_retried = True
                challenge = attempt.headers.get("WWW-Authenticate", "")
                authorization = await self._auth.answer(
                    request.registry, request.repo, creds, challenge, rejected=send_auth
                )
                if authorization is not None:
                    continue
                # The credentials were refused: the client gets the 401 and can authenticate itself.
                attempt.final = True
            return UpstreamResponse(attempt.status, attempt.headers, bytes(attempt.body), attempt.truncated)

    async def _send(
        self,
        registry: str,
        method: str,
        url: str,
        headers: Mapping[str, str],
        authorization: str | None,
        attempt: _Attempt,
        pins: list[str],
    ) -> None:
        send_headers = HTTPHeaders({"User-Agent": USER_AGENT})
        for name, value in headers.items():
            send_headers[name] = value
        if authorization:
            send_headers["Authorization"] = authorization
        proxy = _proxy_for(url)
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
            raise UpstreamError(registry, f"{method} {_origin(url)}: {reason}") from failure
        metrics.UPSTREAM_REQUESTS.labels(label, str(attempt.status)).inc()
        if attempt.headers_at is not None:
            metrics.UPSTREAM_LATENCY.labels(label).observe(attempt.headers_at - started)
        if attempt.status == 429 or attempt.status >= 500:
            log.warning("upstream %s: %s %s answered %d", registry, method, _redact(url), attempt.status)
        else:
            log.debug("upstream %s %s -> %d (%d bytes)", method, _redact(url), attempt.status, attempt.received)
        if attempt.error is not None:
            raise attempt.error

    def _prepare_curl(
        self, curl: pycurl.Curl, proxy: str | None, pins: list[str], attempt: _Attempt | None = None
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

    async def _fetch_token(self, request: TokenRequest) -> TokenAnswer:
        proxy = _proxy_for(request.url)
        try:
            pins = await self.guard.pin(request.registry, request.url, proxied=proxy is not None)
        except RegcacheError as exc:
            log.warning("token realm %s refused: %s", _origin(request.url), exc)
            return TokenAnswer(403, b"")
        http_request = HTTPRequest(
            request.url,
            headers={"Authorization": request.authorization, "User-Agent": USER_AGENT},
            follow_redirects=False,
            connect_timeout=self._connect_timeout,
            request_timeout=30,
            ca_certs=self._ca_bundle,
            prepare_curl_callback=lambda curl: self._prepare_curl(curl, proxy, pins),
        )
        response = await self._http.fetch(http_request, raise_error=False)
        if response.code == 599:
            log.warning("token realm %s unreachable: %s", _origin(request.url), response.error)
        return TokenAnswer(response.code, response.body or b"")


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _redact(url: str) -> str:
    """A URL fit for a log line: presigned query strings are credentials."""
    return url.split("?", 1)[0]


def _proxy_for(url: str) -> str | None:
    """The proxy for a URL from HTTPS_PROXY/HTTP_PROXY/ALL_PROXY and NO_PROXY, either case."""
    proxies = urllib.request.getproxies_environment()
    parts = urllib.parse.urlsplit(url)
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass_environment(parts.netloc, proxies):
        return None
    if "://" not in proxy:
        proxy = "http://" + proxy
    return proxy


def _combined_ca_bundle(extra: Path) -> str:
    """The system's trusted CAs plus the operator's, in one file curl can load.

    curl takes one CA file, and naming one replaces the system bundle: the extra CA must be added
    to it, not substituted for it.
    """
    parts = []
    system = ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt"
    if os.path.exists(system):
        parts.append(Path(system).read_text())
    parts.append(extra.read_text())
    handle, path = tempfile.mkstemp(prefix="regcache-ca-", suffix=".pem")
    with os.fdopen(handle, "w") as out:
        out.write("\n".join(parts))
    return path
