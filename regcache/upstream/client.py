"""The one upstream client: a logical request to a registry, through redirects and auth.

`fetch` answers with the whole (small) answer; `open` answers a 2xx with a stream to pull its
body from, and anything else whole, so that it can be passed to the client unchanged. What to do
with each answer on the way is decided by the pure `steps.next_step`; the transport (curl.py)
owns every curl quirk.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tornado.httputil import HTTPHeaders

from regcache.config import Settings
from regcache.errors import RegcacheError
from regcache.upstream.auth import Authenticator, TokenAnswer, TokenRequest
from regcache.upstream.curl import Attempt, CurlTransport, Sink
from regcache.upstream.guard import AddressGuard
from regcache.upstream.proxy import combined_ca_bundle, origin_of, proxy_for
from regcache.upstream.steps import Authenticate, Final, Follow, Progress, next_step
from regcache.upstream.stream import UpstreamStream

log = logging.getLogger(__name__)

MAX_ERROR_BODY = 1 << 20
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

    def __init__(self, settings: Settings, idle_timeout: float = 60.0, connect_timeout: float = 5.0) -> None:
        self._settings = settings
        self._ca_bundle = combined_ca_bundle(settings.upstream_ca) if settings.upstream_ca else None
        self._transport = CurlTransport(self._ca_bundle, connect_timeout, idle_timeout)
        self._auth = Authenticator(settings.creds, self._fetch_token)
        self._streams: set[asyncio.Task[UpstreamResponse]] = set()
        self.guard = AddressGuard(settings)

    def close(self) -> None:
        self._transport.close()
        if self._ca_bundle:
            Path(self._ca_bundle).unlink(missing_ok=True)

    def endpoint(self, registry: str) -> str:
        return self._settings.endpoint(registry)

    @property
    def private_registries(self) -> frozenset[str]:
        """Registries whose cached content is served only after the registry says yes."""
        return self._settings.private_registries

    async def fetch(self, request: UpstreamRequest) -> UpstreamResponse:
        """The registry's final answer, its body held (up to the request's limit)."""
        return await self._exchanges(request, None)

    async def open(self, request: UpstreamRequest) -> UpstreamStream | UpstreamResponse:
        """A 2xx answer as a stream whose body is pulled as it arrives; any other answer whole.

        Returns as soon as the final answer's headers are known. Raises UpstreamError when the
        registry cannot be reached; a transfer that breaks later raises from the stream.
        """
        stream = UpstreamStream()

        async def transfer() -> UpstreamResponse:
            try:
                response = await self._exchanges(request, stream)
            except RegcacheError as exc:
                stream.finish(exc)
                raise
            stream.finish()
            return response

        task = asyncio.get_running_loop().create_task(transfer())
        await asyncio.wait([stream.head, task], return_when=asyncio.FIRST_COMPLETED)
        if not stream.head.done():
            return task.result()  # not a 2xx (or not reachable: raises)
        self._streams.add(task)
        task.add_done_callback(_forget(self._streams))
        return stream

    async def _exchanges(self, request: UpstreamRequest, sink: Sink | None) -> UpstreamResponse:
        self.guard.check_registry(request.registry)
        base = self.endpoint(request.registry)
        url = base + request.path
        endpoint_host = urllib.parse.urlsplit(base).netloc
        creds = (
            None
            if request.client_authorization
            else self._auth.credentials(request.registry, endpoint_host, request.repo)
        )
        authorization = request.client_authorization
        if creds is not None:
            authorization = self._auth.cached_header(request.registry, request.repo)
        progress = Progress(origin_of(url), url, request.method, has_credentials=creds is not None)
        while True:
            sent_auth = authorization if progress.same_origin else None
            here = progress

            def is_final(status: int, headers: HTTPHeaders, here: Progress = here) -> bool:
                return isinstance(next_step(status, headers, here), Final)

            attempt = Attempt(sink, is_final, request.buffered_limit)
            pins = await self.guard.pin(request.registry, here.url, proxied=proxy_for(here.url) is not None)
            await self._transport.send(
                request.registry, here.method, here.url, request.headers, sent_auth, attempt, pins
            )
            step = next_step(attempt.status, attempt.headers, here)
            progress = here.after(step)
            if isinstance(step, Follow):
                continue
            if isinstance(step, Authenticate):
                authorization = await self._auth.answer(
                    request.registry, request.repo, creds, step.challenge, rejected=sent_auth
                )
                if authorization is not None:
                    continue
                # The credentials were refused: the client gets the 401 and can authenticate itself.
            return UpstreamResponse(attempt.status, attempt.headers, bytes(attempt.body), attempt.truncated)

    async def _fetch_token(self, request: TokenRequest) -> TokenAnswer:
        try:
            pins = await self.guard.pin(request.registry, request.url, proxied=proxy_for(request.url) is not None)
        except RegcacheError as exc:
            log.warning("token realm %s refused: %s", origin_of(request.url), exc)
            return TokenAnswer(403, b"")
        status, body, error = await self._transport.get_token(request.url, request.authorization, pins)
        if status == 599:
            log.warning("token realm %s unreachable: %s", origin_of(request.url), error)
        return TokenAnswer(status, body)


def _forget(tasks: set[asyncio.Task[UpstreamResponse]]) -> Callable[[asyncio.Task[UpstreamResponse]], None]:
    """A done callback: the task leaves the set, its error already went to the stream."""

    def done(task: asyncio.Task[UpstreamResponse]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()  # reported through the stream

    return done
