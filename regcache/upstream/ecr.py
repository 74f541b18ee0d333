"""Amazon ECR without static credentials: the password is a token from ECR's API.

ECR registries (`<account>.dkr.ecr.<region>.amazonaws.com`, `.amazonaws.com.cn` in China) take
Basic credentials `AWS:<token>`, where the token comes from `GetAuthorizationToken` and expires
after 12 hours, so it cannot live in the creds file. regcache asks for it with the standard AWS
chain (IRSA web identity, environment, profile, instance role), keeps it until shortly before
it expires, and asks again once however many requests need it at the same moment. The token
then answers the registry's challenge like any creds-file password (Basic, or Basic at a token
realm for a Bearer challenge: auth.py).

When ECR cannot be asked (no AWS credentials, no permission, API unreachable) the request goes
up without credentials, so the client gets the registry's own 401 and can authenticate itself;
one WARNING says so per run of failures, and the API is asked again only after a backoff.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from regcache import metrics
from regcache.breaker import CircuitBreaker
from regcache.credentials import Credentials, EcrAuth
from regcache.singleflight import SingleFlight

log = logging.getLogger(__name__)

ECR_HOST_RE = re.compile(r"(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?")
# Asked again this long before the token's expiresAt, so no request goes up with a token that
# expires on the way.
REFRESH_MARGIN = 300.0
# A token already at or past its expiry when it arrives (a clock that is off, or a stand-in that
# dates its tokens in the past) is still used this long, so ECR is not asked once per request.
MIN_TOKEN_USE = 60.0
BACKOFF_FIRST = 10.0
BACKOFF_MAX = 300.0
# Covers the credential chain too (a web identity exchange with STS, the instance metadata service).
CALL_TIMEOUT = 20.0
# Registry names come from clients: bound what they can make regcache remember.
MAX_SOURCES = 256


def ecr_auth_for(registry: str, endpoint_host: str, entry: EcrAuth | None) -> EcrAuth | None:
    """How to get the token for a registry, or None when it is not an ECR registry.

    A creds-file entry marked `ecr` decides; what it leaves out comes from an ECR host name, as
    the registry is named (`ns`) or as its endpoint's host (an `--upstream` URL).
    """
    named = None
    for name in (registry, endpoint_host):
        match = ECR_HOST_RE.fullmatch(name.lower().partition(":")[0])
        if match:
            named = EcrAuth(region=match[2], registry_id=match[1])
            break
    if entry is None or named is None:
        return entry or named
    return EcrAuth(entry.region or named.region, entry.registry_id or named.registry_id, entry.endpoint)


@dataclass(frozen=True)
class EcrToken:
    credentials: Credentials
    expires_at: float  # seconds since the epoch, as ECR's expiresAt


class EcrUnavailable(Exception):
    """GetAuthorizationToken gave no usable token; the message says why, for the log."""


TokenApi = Callable[[EcrAuth], Awaitable[EcrToken]]


def _describe(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error", {})
        return f"{error.get('Code', '')}: {error.get('Message', '')}".strip(": ")
    return str(exc) or type(exc).__name__


def _prepared_session() -> object:
    """An aiobotocore session with ECR's service model loaded: run in a thread, since importing
    botocore and reading its JSON models takes a second or more that the event loop, serving
    every other pull, must not wait."""
    from aiobotocore.session import get_session

    session = get_session()
    loader = session.get_component("data_loader")
    for kind in ("service-2", "endpoint-rule-set-1"):
        loader.load_service_model("ecr", kind)
    for name in ("endpoints", "partitions"):
        loader.load_data(name)
    return session


class AwsEcrApi:
    """GetAuthorizationToken through aiobotocore: the one place ECR's API is called."""

    def __init__(self) -> None:
        self._session: object = None  # one session: the AWS chain's credentials are resolved once, refreshed by it
        self._preparing = asyncio.Lock()

    async def __call__(self, source: EcrAuth) -> EcrToken:
        # botocore reads AWS_DEFAULT_REGION and the profile's region, not AWS_REGION.
        region = source.region or os.environ.get("AWS_REGION") or None
        # endpoint None: botocore's own choice, AWS_ENDPOINT_URL_ECR or AWS_ENDPOINT_URL included.
        ask = {"registryIds": [source.registry_id]} if source.registry_id else {}
        try:
            async with self._preparing:
                if self._session is None:
                    self._session = await asyncio.to_thread(_prepared_session)
            from botocore.config import Config  # imported by _prepared_session: no cost here

            config = Config(connect_timeout=3, read_timeout=10, retries={"max_attempts": 2, "mode": "standard"})
            async with self._session.create_client(  # type: ignore[attr-defined]
                "ecr", region_name=region, endpoint_url=source.endpoint, config=config
            ) as client:
                answer = await client.get_authorization_token(**ask)
        except Exception as exc:  # noqa: BLE001 - botocore's and aiohttp's errors are translated here
            raise EcrUnavailable(_describe(exc)) from None
        try:
            data = answer["authorizationData"][0]
            username, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
            expires_at = data["expiresAt"].timestamp() if data.get("expiresAt") else 0.0
        except (KeyError, IndexError, TypeError, ValueError, AttributeError):
            raise EcrUnavailable("GetAuthorizationToken answered without a token") from None
        if not username or not password:
            raise EcrUnavailable("GetAuthorizationToken answered a token that is not user:password")
        return EcrToken(Credentials(username, password), expires_at)


class EcrCredentials:
    """ECR tokens by where they come from: cached, refreshed once for all waiters, paced on failure."""

    def __init__(
        self,
        api: TokenApi | None = None,
        clock: Callable[[], float] = time.time,
        refresh_margin: float = REFRESH_MARGIN,
    ) -> None:
        self._api = api or AwsEcrApi()
        self._clock = clock  # wall clock: expiresAt is one
        self._margin = refresh_margin
        # The credentials and when to ask for new ones, as the Authenticator keeps its headers.
        self._held: OrderedDict[EcrAuth, tuple[Credentials, float]] = OrderedDict()
        self._failing: OrderedDict[EcrAuth, CircuitBreaker] = OrderedDict()
        self._refreshes: SingleFlight[EcrAuth, Credentials | None] = SingleFlight()

    async def credentials(self, registry: str, source: EcrAuth) -> Credentials | None:
        """The registry's Basic credentials, or None while ECR cannot give them."""
        now = self._clock()
        credentials, refresh_at = self._held.get(source, (None, 0.0))
        if credentials is not None and now < refresh_at:
            return credentials
        failing = self._failing.get(source)
        if failing is not None and not failing.available:
            return None
        return await self._refreshes.run(source, lambda: self._refresh(registry, source))

    async def _refresh(self, registry: str, source: EcrAuth) -> Credentials | None:
        try:
            token = await asyncio.wait_for(self._api(source), CALL_TIMEOUT)
        except (EcrUnavailable, TimeoutError) as exc:
            self._failed(registry, source, str(exc) or f"no answer within {CALL_TIMEOUT:.0f}s")
            return None
        metrics.ECR_TOKEN_REFRESHES.labels(metrics.registry_label(registry), "ok").inc()
        now = self._clock()
        refresh_at = max(token.expires_at - self._margin, now + MIN_TOKEN_USE)
        self._held[source] = (token.credentials, refresh_at)
        self._held.move_to_end(source)
        while len(self._held) > MAX_SOURCES:
            self._held.popitem(last=False)
        failing = self._failing.pop(source, None)
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(token.expires_at))
        log.info(
            "upstream %s: ECR token for account %s in %s%s, expires %s%s; next refresh in %.0fs",
            registry,
            source.registry_id or "(the caller's)",
            source.region or "(AWS default region)",
            f" after {failing.failures} failed tries" if failing else "",
            expires,
            " (already past: is the clock right?)" if token.expires_at <= now else "",
            refresh_at - now,
        )
        return token.credentials

    def _failed(self, registry: str, source: EcrAuth, why: str) -> None:
        metrics.ECR_TOKEN_REFRESHES.labels(metrics.registry_label(registry), "error").inc()
        failing = self._failing.get(source)
        first = failing is None
        if failing is None:
            failing = self._failing[source] = CircuitBreaker(BACKOFF_FIRST, BACKOFF_MAX, self._clock)
            while len(self._failing) > MAX_SOURCES:
                self._failing.popitem(last=False)
        backoff = failing.failed()
        if first:
            # One line per run of failures, not one per request: the metric counts the rest.
            log.warning(
                "upstream %s: cannot get an ECR token (%s); clients get the registry's 401 until it works, "
                "next try in %.0fs",
                registry,
                why,
                backoff,
            )
        else:
            log.debug("upstream %s: still no ECR token (%s), next try in %.0fs", registry, why, backoff)
