"""The one upstream client: a logical request to a registry, through redirects and auth.

`fetch` answers with the whole (small) answer; `open` answers a 2xx with a stream to pull its
body from, and anything else whole, so that it can be passed to the client unchanged. Every
contact with a registry (manifests, blobs, access checks, tokens) goes through `_final`, so that
is where --offline refuses it: one decision, raised as `Offline` (a 404 for the client). What to do
with each answer on the way is decided by the pure `steps.next_step`; the transport
(transport.py) owns every curl quirk and receives bodies off the event loop.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tornado.httputil import HTTPHeaders

from regcache import metrics
from regcache.config import Settings
from regcache.errors import Offline, RegcacheError, UpstreamError
from regcache.upstream.auth import Authenticator, TokenAnswer, TokenRequest
from regcache.upstream.guard import AddressGuard
from regcache.upstream.proxy import combined_ca_bundle, origin_of, proxy_for
from regcache.upstream.steps import Authenticate, Final, Progress, next_step
from regcache.upstream.transport import CurlTransport, Exchange

log = logging.getLogger(__name__)

MAX_ERROR_BODY = 1 << 20
# Tokens come back small and fast, or not at all.
TOKEN_TIMEOUT = 30.0
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


class UpstreamClient:
    """Create it inside the running event loop, close it at shutdown."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._ca_bundle = combined_ca_bundle(settings.upstream_ca) if settings.upstream_ca else None
        # A thread per transfer in flight: every fill, and the small requests beside them.
        threads = settings.max_fills + 64
        self._transport = CurlTransport(self._ca_bundle, settings.upstream_idle_timeout, threads)
        self._auth = Authenticator(settings.creds, self._fetch_token)
        self.guard = AddressGuard(settings)

    def close(self) -> None:
        self._transport.close()
        if self._ca_bundle:
            Path(self._ca_bundle).unlink(missing_ok=True)

    async def fetch(self, request: UpstreamRequest) -> UpstreamResponse:
        """The registry's final answer, its body held (up to the request's limit)."""
        answer = await self._final(request)
        if isinstance(answer, UpstreamResponse):
            return answer
        body, truncated = await answer.read(request.buffered_limit)
        return UpstreamResponse(answer.status, answer.headers, body, truncated)

    async def open(self, request: UpstreamRequest) -> Exchange | UpstreamResponse:
        """A 2xx answer as a stream whose body is pulled as it arrives; any other answer whole.

        Returns as soon as the final answer's headers are known. Raises UpstreamError when the
        registry cannot be reached; a transfer that breaks later raises from the stream.
        """
        answer = await self._final(request)
        if isinstance(answer, UpstreamResponse) or 200 <= answer.status < 300:
            return answer
        try:
            body, truncated = await answer.read(request.buffered_limit)
        except UpstreamError:
            # The status is the answer, not its body: distribution answers a Range past the end
            # with a 416 announcing the whole blob's length and sending one line.
            body, truncated = b"", True
        return UpstreamResponse(answer.status, answer.headers, body, truncated)

    async def _final(self, request: UpstreamRequest) -> Exchange | UpstreamResponse:
        """The exchange whose answer is the request's (redirects followed, a 401 answered with
        our credentials), or that answer already read."""
        if self._settings.offline:
            error = Offline(request.registry, request.path)
            metrics.OFFLINE_MISSES.labels(metrics.registry_label(request.registry), error.kind).inc()
            raise error
        self.guard.check_registry(request.registry)
        base = self._settings.endpoint(request.registry)
        url = base + request.path
        authorization = request.client_authorization
        creds = None
        if not authorization:
            endpoint_host = urllib.parse.urlsplit(base).netloc
            creds = await self._auth.credentials(request.registry, endpoint_host, request.repo)
            if creds is not None:
                authorization = self._auth.cached_header(request.registry, request.repo, creds)
        progress = Progress(origin_of(url), url, request.method, has_credentials=creds is not None)
        while True:
            sent_auth = authorization if progress.same_origin else None
            headers = dict(request.headers)
            if sent_auth:
                headers["Authorization"] = sent_auth
            pins = await self.guard.pin(request.registry, progress.url, proxied=proxy_for(progress.url) is not None)
            exchange = await self._transport.exchange(request.registry, progress.method, progress.url, headers, pins)
            step = next_step(exchange.status, exchange.headers, progress)
            progress = progress.after(step)
            if isinstance(step, Final):
                return exchange
            if not isinstance(step, Authenticate):
                await exchange.aclose()
                continue
            body, truncated = await exchange.read(request.buffered_limit)
            authorization = await self._auth.answer(
                request.registry, request.repo, creds, step.challenge, rejected=sent_auth
            )
            if authorization is None:
                # The credentials were refused: the client gets the 401 and can authenticate itself.
                return UpstreamResponse(exchange.status, exchange.headers, body, truncated)

    async def _fetch_token(self, request: TokenRequest) -> TokenAnswer:
        try:
            pins = await self.guard.pin(request.registry, request.url, proxied=proxy_for(request.url) is not None)
        except RegcacheError as exc:
            log.warning("token realm %s refused: %s", origin_of(request.url), exc)
            return TokenAnswer(403, b"")
        headers = {"Authorization": request.authorization}
        try:
            exchange = await self._transport.exchange(
                request.registry, "GET", request.url, headers, pins, timeout=TOKEN_TIMEOUT
            )
            body, _ = await exchange.read(MAX_ERROR_BODY)
        except RegcacheError as exc:
            log.warning("token realm %s unreachable: %s", origin_of(request.url), exc)
            return TokenAnswer(599, b"")
        return TokenAnswer(exchange.status, body)
