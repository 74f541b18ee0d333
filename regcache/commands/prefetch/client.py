"""Requests to a running regcache, made as containerd makes them.

The standard library's http.client, one connection per request, in worker threads: its socket
timeout applies to each read, so it is an idle timeout (a multi-GiB layer may take as long as it
takes, a cache that stops sending is given up on), and it never reads proxy variables, so
`--via` is reached directly.

Without credentials for a registry, regcache passes its 401 on, as a registry would, and its
clients fetch an anonymous token from the challenge's realm themselves (Docker Hub wants one even
for public images). So does prefetch: one GET to the realm (with the machine's proxy settings,
it is on the internet), the token kept for its scope, the request sent again with it.
"""

from __future__ import annotations

import http.client
import json
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from regcache import __version__
from regcache.oci import mediatypes
from regcache.upstream.auth import parse_www_authenticate

USER_AGENT = f"regcache-prefetch/{__version__}"
# What containerd's resolver sends for a manifest by tag or digest (remotes/docker/resolver.go).
MANIFEST_ACCEPT = ", ".join(
    (mediatypes.DOCKER_MANIFEST, mediatypes.DOCKER_LIST, mediatypes.OCI_MANIFEST, mediatypes.OCI_INDEX, "*/*")
)
# The cache's answer to "was it cached?": hit, miss or skip (web/handlers.py CACHE_RESULT_HEADER).
CACHE_RESULT_HEADER = "X-Regcache-Cache"
READ_CHUNK = 256 * 1024


class PrefetchError(Exception):
    """Why one image (or the whole run) could not be prefetched, in words for the operator."""


@dataclass(frozen=True)
class Answer:
    """The cache's answer: status, headers, the body's first `keep` bytes and how many arrived."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes
    received: int

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def cache_result(self) -> str | None:
        """hit, miss or skip when the cache says so (a regcache), else None."""
        result = self.headers.get(CACHE_RESULT_HEADER)
        return result.strip().lower() if result else None

    def reason(self) -> str:
        """`404 MANIFEST_UNKNOWN: …` from the OCI error body, or the bare status."""
        try:
            errors = json.loads(self.body).get("errors") or []
            first = errors[0]
            return f"{self.status} {first.get('code', '')}: {first.get('message', '')}".strip()
        except (ValueError, AttributeError, IndexError, TypeError):
            return f"{self.status} {http.client.responses.get(self.status, '')}".strip()


class CacheClient:
    """A regcache at `via` (http:// or https://host[:port]), asked with `?ns=<registry>`."""

    def __init__(self, via: str, idle_timeout: float) -> None:
        parts = urllib.parse.urlsplit(via)
        self.via = via
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if self._https else 80)
        self._timeout = idle_timeout
        self.cancelled = threading.Event()  # set: every request stops at its next chunk
        # (registry, repo) → Authorization; the walk's threads each get or set one entry, which a dict does atomically.
        self._tokens: dict[tuple[str, str], str] = {}

    def ping(self) -> None:
        """PrefetchError unless a registry API answers at `via` (GET /v2/ as containerd does)."""
        answer = self._request("GET", "/v2/", {}, keep=4096)
        if answer.headers.get("Docker-Distribution-Api-Version") is None:
            raise PrefetchError(f"{self.via} is not a registry mirror (GET /v2/ answered {answer.status})")

    def manifest(self, registry: str, repo: str, reference: str, method: str = "GET", media_type: str = "") -> Answer:
        """A manifest, whole (they are 4 MiB at most); of `media_type` when an index named it."""
        headers = {"Accept": f"{media_type}, */*" if media_type else MANIFEST_ACCEPT}
        return self._request(method, f"/v2/{repo}/manifests/{reference}", headers, registry, keep=4 << 20)

    def drain_blob(
        self,
        registry: str,
        repo: str,
        digest: str,
        media_type: str,
        on_received: Callable[[int], None],
        keep: int = 0,
    ) -> Answer:
        """GET a blob and read it to the end, so the cache stores it; the bytes are dropped
        (but the first `keep`). `on_received` hears the running count, for the progress display."""
        headers = {"Accept": f"{media_type}, */*" if media_type else "*/*"}
        path = f"/v2/{repo}/blobs/{digest}"
        return self._request("GET", path, headers, registry, keep=keep, on_received=on_received)

    def _request(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        registry: str | None = None,
        keep: int = 0,
        on_received: Callable[[int], None] | None = None,
    ) -> Answer:
        """The answer, after fetching an anonymous token once when the registry asked for one."""
        repo = path.removeprefix("/v2/").rsplit("/", 2)[0]
        key = (registry or "", repo)
        known = self._tokens.get(key)
        sent = {**headers, "Authorization": known} if known else headers
        answer = self._exchange(method, path, sent, registry, keep, on_received)
        if answer.status != 401 or registry is None:
            return answer
        authorization = self._anonymous_token(answer, repo)
        if authorization is None:
            return answer
        self._tokens[key] = authorization
        return self._exchange(method, path, {**headers, "Authorization": authorization}, registry, keep, on_received)

    def _anonymous_token(self, answer: Answer, repo: str) -> str | None:
        """`Bearer <token>` from the challenge's realm, or None (a Basic challenge, a refusal:
        then the 401 is the answer, and the cache needs credentials, --creds-file)."""
        for challenge in parse_www_authenticate(answer.headers.get("WWW-Authenticate", "")):
            realm = challenge.params.get("realm", "")
            if challenge.scheme != "bearer" or urllib.parse.urlsplit(realm).scheme not in ("http", "https"):
                continue
            query = {"scope": challenge.params.get("scope") or f"repository:{repo}:pull"}
            if challenge.params.get("service"):
                query["service"] = challenge.params["service"]
            url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
            try:
                with urllib.request.urlopen(url, timeout=self._timeout) as response:  # noqa: S310 - http(s) only
                    data = json.loads(response.read(1 << 20))
            except (OSError, ValueError):
                return None
            token = data.get("token") or data.get("access_token") if isinstance(data, dict) else None
            return f"Bearer {token}" if isinstance(token, str) and token else None
        return None

    def _exchange(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        registry: str | None,
        keep: int,
        on_received: Callable[[int], None] | None,
    ) -> Answer:
        if self.cancelled.is_set():
            raise PrefetchError("interrupted")
        query = f"?ns={urllib.parse.quote(registry, safe=':[]')}" if registry else ""
        connection_class = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        connection = connection_class(self._host, self._port, timeout=self._timeout)
        received = 0
        try:
            connection.request(method, path + query, headers={"User-Agent": USER_AGENT, **headers})
            response = connection.getresponse()
            body = bytearray()
            # A failure's body is its reason: keep enough of it to say why.
            limit = keep if 200 <= response.status < 300 else 64 * 1024
            while method != "HEAD":
                chunk = response.read(READ_CHUNK)
                if not chunk:
                    break
                received += len(chunk)
                if on_received is not None:
                    on_received(received)
                if len(body) < limit:
                    body += chunk[: limit - len(body)]
                if self.cancelled.is_set():
                    raise PrefetchError("interrupted")
            return Answer(response.status, response.headers, bytes(body), received)
        except TimeoutError:
            raise PrefetchError(f"the cache at {self.via} sent nothing for {self._timeout:g}s") from None
        except (http.client.HTTPException, ConnectionResetError) as exc:
            if received:
                raise PrefetchError(f"the cache closed the connection after {received} bytes ({exc})") from None
            raise PrefetchError(f"the cache at {self.via} broke off: {exc or type(exc).__name__}") from None
        except OSError as exc:
            raise PrefetchError(f"cannot reach the cache at {self.via}: {exc.strerror or exc}") from None
        finally:
            connection.close()
