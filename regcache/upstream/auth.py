"""Upstream authentication: WWW-Authenticate parsing, Basic and Bearer token flows, token cache.

Credentials come from the creds file, or for Amazon ECR from ECR's API (ecr.py). They reach only
their registry and the token realm that registry names; tokens are cached per registry and
repository until shortly before they expire (or until the credentials they were made from
change, as an ECR token does), and concurrent requests for the same scope share one token fetch.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from regcache.credentials import Credentials, CredentialStore, NoCredentials
from regcache.singleflight import SingleFlight
from regcache.upstream.ecr import EcrCredentials, ecr_auth_for

log = logging.getLogger(__name__)

# RFC 7235: challenges are a scheme followed by comma-separated auth-params.
_TOKEN = r"[A-Za-z0-9!#$%&'*+.^_`|~-]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_ITEM_RE = re.compile(rf"\s*(?:({_TOKEN})\s*=\s*({_QUOTED}|{_TOKEN}|)|({_TOKEN}))\s*,?")
TOKEN_EXPIRY_MARGIN = 10.0
MAX_CACHED_HEADERS = 4096
DEFAULT_TOKEN_LIFETIME = 60.0


@dataclass(frozen=True)
class Challenge:
    scheme: str
    params: Mapping[str, str]


def parse_www_authenticate(value: str) -> list[Challenge]:
    """Parse one WWW-Authenticate value into its challenges; garbage ends the parse, never raises."""
    challenges: list[tuple[str, dict[str, str]]] = []
    pos = 0
    while pos < len(value):
        match = _ITEM_RE.match(value, pos)
        if not match or match.end() == pos:
            break
        pos = match.end()
        name, raw, scheme = match.groups()
        if scheme is not None:
            challenges.append((scheme.lower(), {}))
        elif challenges:
            if raw.startswith('"'):
                raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
            challenges[-1][1][name.lower()] = raw
    return [Challenge(scheme, params) for scheme, params in challenges]


def basic_header(creds: Credentials) -> str:
    raw = f"{creds.username}:{creds.password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True)
class TokenRequest:
    """What the token realm is asked: sent with Basic credentials, never to anyone else."""

    url: str
    authorization: str = field(repr=False)
    registry: str = ""


@dataclass(frozen=True)
class TokenAnswer:
    status: int
    body: bytes


TokenFetcher = Callable[[TokenRequest], Awaitable[TokenAnswer]]


class Authenticator:
    """Turns configured credentials into Authorization headers for one registry and repository."""

    def __init__(
        self,
        creds: CredentialStore,
        fetch_token: TokenFetcher,
        clock: Callable[[], float] = time.monotonic,
        ecr: EcrCredentials | None = None,
    ) -> None:
        self._creds = creds
        self._fetch_token = fetch_token
        self._clock = clock
        self._ecr = ecr or EcrCredentials()
        self._headers: OrderedDict[tuple[str, str], tuple[str, float, Credentials]] = OrderedDict()
        self._fetches: SingleFlight[tuple[str, str], str | None] = SingleFlight()

    async def credentials(self, registry: str, endpoint_host: str, repo: str) -> Credentials | None:
        """What regcache authenticates with at this registry: a creds-file entry's password,
        or for an ECR registry (by host name or an `ecr` entry) a token from ECR; None when
        neither applies, an entry says `ecr: false`, or ECR cannot give one now (the client
        then gets the registry's 401)."""
        entry = self._creds.lookup(registry, endpoint_host, repo)
        if isinstance(entry, Credentials):
            return entry
        if isinstance(entry, NoCredentials):
            return None
        source = ecr_auth_for(registry, endpoint_host, entry)
        if source is None:
            return None
        return await self._ecr.credentials(registry, source)

    def cached_header(self, registry: str, repo: str, creds: Credentials | None = None) -> str | None:
        """The cached Authorization for a repository; with `creds`, only one made from them."""
        entry = self._headers.get((registry, repo))
        if entry is None:
            return None
        header, expires_at, made_from = entry
        if self._clock() >= expires_at:
            del self._headers[(registry, repo)]
            return None
        if creds is not None and made_from != creds:
            return None  # made from a token ECR has since replaced
        return header

    async def answer(
        self, registry: str, repo: str, creds: Credentials, challenge_header: str, rejected: str | None = None
    ) -> str | None:
        """The Authorization header that answers a 401's challenge, or None if we cannot.

        `rejected` is the header the 401 refused (None when the request carried none). A request
        that went up before another one obtained a token gets that token, not a second fetch;
        concurrent callers for the same registry and repository share one token fetch.
        """
        key = (registry, repo)
        current = self.cached_header(registry, repo, creds)
        if current is not None and current != rejected:
            return current
        self._headers.pop(key, None)

        async def fetch() -> str | None:
            header, lifetime = await self._answer(registry, repo, creds, challenge_header)
            if header is not None:
                self._headers[key] = (header, self._clock() + lifetime, creds)
                while len(self._headers) > MAX_CACHED_HEADERS:
                    self._headers.popitem(last=False)  # the oldest: repositories are many
            return header

        return await self._fetches.run(key, fetch)

    async def _answer(
        self, registry: str, repo: str, creds: Credentials, challenge_header: str
    ) -> tuple[str | None, float]:
        challenges = {c.scheme: c for c in parse_www_authenticate(challenge_header)}
        bearer = challenges.get("bearer")
        if bearer is not None and bearer.params.get("realm"):
            return await self._bearer_token(registry, repo, creds, bearer)
        if "basic" in challenges:
            return basic_header(creds), float("inf")
        log.warning("upstream %s: unsupported auth challenge for %s", registry, repo)
        return None, 0.0

    async def _bearer_token(
        self, registry: str, repo: str, creds: Credentials, challenge: Challenge
    ) -> tuple[str | None, float]:
        realm = challenge.params["realm"]
        parts = urllib.parse.urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            log.warning("upstream %s: ignoring token realm that is not an http(s) URL", registry)
            return None, 0.0
        query = []
        if challenge.params.get("service"):
            query.append(("service", challenge.params["service"]))
        query.append(("scope", challenge.params.get("scope") or f"repository:{repo}:pull"))
        separator = "&" if parts.query else "?"
        url = realm + separator + urllib.parse.urlencode(query)
        answer = await self._fetch_token(TokenRequest(url, basic_header(creds), registry))
        if answer.status != 200:
            log.warning(
                "upstream %s: token realm %s refused the credentials (%d)", registry, parts.netloc, answer.status
            )
            return None, 0.0
        try:
            data = json.loads(answer.body)
            token = data.get("token") or data.get("access_token")
            lifetime = float(data.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
        except (ValueError, AttributeError, TypeError):
            token, lifetime = None, 0.0
        if not token or not isinstance(token, str):
            log.warning("upstream %s: token realm %s answered without a token", registry, parts.netloc)
            return None, 0.0
        log.info("upstream %s: got a token for %s, valid %.0fs", registry, repo, lifetime)
        return "Bearer " + token, max(lifetime - TOKEN_EXPIRY_MARGIN, 1.0)
