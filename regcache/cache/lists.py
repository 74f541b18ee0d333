"""Tag lists and referrers: asked upstream, the last good answer kept for when the registry cannot answer.

A tag list changes with every push, so it is always asked for upstream (with the client's
credentials, or the creds file's when the client sends none, as for manifests); referrers change
when a signature or an SBOM is pushed, so they are served for --tag-ttl and then asked again.
Either way the last 2xx answer is kept, per registry, repository and query, as a small object in
the tiers (like a tag pointer), and served when the registry is unreachable or answers 429/5xx:
a stale list beats a failed `skopeo list-tags` or a signature check that cannot run. The
registry's refusals (401 with its challenge, 403, 404: a registry without the referrers API) are
the client's to see, and nothing is kept from them.

From a --private-registry (or with --cache-manifests no) nothing is kept: every request is the
client's own question to the registry, so one client's list never reaches another.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from dataclasses import dataclass

from tornado.httputil import HTTPHeaders

from regcache import metrics
from regcache.cache.context import ClientContext
from regcache.cache.manifests import upstream_unavailable
from regcache.cache.policy import Policy
from regcache.errors import ListTooLarge, Offline, UpstreamError
from regcache.oci.listings import ListRef
from regcache.oci.manifest import json_object
from regcache.singleflight import SingleFlight
from regcache.storage.base import list_key
from regcache.storage.tiered import TieredStore
from regcache.upstream.client import UpstreamClient, UpstreamResponse

log = logging.getLogger(__name__)

# Docker Hub's biggest repositories list tens of thousands of tags in one unpaged answer.
MAX_LIST_SIZE = 16 * 1024 * 1024
# What of a 2xx answer is kept and served again; the rest is the connection's business.
KEPT_HEADERS = ("Content-Type", "Link", "OCI-Filters-Applied")


@dataclass(frozen=True)
class ListAnswer:
    """What to send: an answer from the registry now, or a kept one (status 200), and how it
    came: hit (kept, within its TTL or while the registry fails), miss (fetched and kept), skip
    (fetched, not kept: a refusal, a private registry, a body that is not a JSON object)."""

    result: str
    response: UpstreamResponse


class ListService:
    """Tag lists and referrers for the handlers; one upstream fetch per list and credential at a time."""

    def __init__(self, store: TieredStore, upstream: UpstreamClient, policy: Policy) -> None:
        self._store = store
        self._upstream = upstream
        self._policy = policy
        self._fetches: SingleFlight[tuple[object, ...], ListAnswer] = SingleFlight()

    def _keeps(self, ref: ListRef) -> bool:
        return (
            self._policy.cache_manifests
            and ref.registry not in self._policy.private_registries
            and not self._policy.repo_is_skipped(ref.registry, ref.repo)
        )

    async def get(self, ref: ListRef, client: ClientContext) -> ListAnswer:
        key = list_key(ref.registry, ref.repo, ref.kind, ref.name) if self._keeps(ref) else None
        if key is not None and ref.kind == "referrers":
            kept = _parse(await self._store.read_small(key))
            if kept is not None and self._policy.tag_is_fresh(kept.fetched_at, time.time()):
                return ListAnswer("hit", kept.response())

        async def fetch() -> ListAnswer:
            return await self._fetch(ref, client, key)

        # The credential is part of the key: a list fetched with one client's token is not another's.
        return await self._fetches.run((ref, client.credential_key()), fetch)

    async def _fetch(self, ref: ListRef, client: ClientContext, key: str | None) -> ListAnswer:
        request = client.request(ref.registry, ref.repo, "GET", ref.path, accept=True, limit=MAX_LIST_SIZE)
        try:
            response = await self._upstream.fetch(request)
        except Offline:
            # --offline: the kept answer is the answer, whatever its age; without one the 404
            # says the cache is offline, and the client asks the registry where it can.
            kept = _parse(await self._store.read_small(key)) if key is not None else None
            if kept is None:
                raise
            return ListAnswer("hit", kept.response())
        except UpstreamError as exc:
            stale = await self._stale(ref, key, exc.message)
            if stale is None:
                raise
            return stale
        if upstream_unavailable(response.status):
            # Without a kept answer the client hears of it (a 503 that sends it to the registry).
            return await self._stale(ref, key, f"answered {response.status}") or ListAnswer("skip", response)
        if not 200 <= response.status < 300:
            return ListAnswer("skip", response)
        if response.truncated:
            raise ListTooLarge(ref.registry, ref.kind, MAX_LIST_SIZE)
        # Only what parses as the spec's answer is kept: an error page served with a 200 is not.
        if key is None or json_object(response.body) is None:
            return ListAnswer("skip", response)
        kept = KeptList(time.time(), response.status, _kept_headers(response.headers), response.body)
        stored = await self._store.put_small(key, kept.encode())
        return ListAnswer("miss" if stored else "skip", response)

    async def _stale(self, ref: ListRef, key: str | None, reason: str) -> ListAnswer | None:
        """The kept answer, while the registry cannot give one; None when nothing was kept."""
        kept = _parse(await self._store.read_small(key)) if key is not None else None
        if kept is None:
            return None
        metrics.STALE_SERVED.labels(metrics.registry_label(ref.registry), ref.kind).inc()
        age = max(0.0, time.time() - kept.fetched_at)
        log.warning("%s: registry %s; serving the answer kept %.0fs ago", ref, reason, age)
        return ListAnswer("hit", kept.response())


@dataclass(frozen=True)
class KeptList:
    """A 2xx list answer as kept in the tiers: when it came, and what is served again."""

    fetched_at: float
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def encode(self) -> bytes:
        return json.dumps(
            {
                "fetched_at": self.fetched_at,
                "status": self.status,
                "headers": [list(pair) for pair in self.headers],
                "body": base64.b64encode(self.body).decode("ascii"),
            }
        ).encode()

    def response(self) -> UpstreamResponse:
        headers = HTTPHeaders()
        for name, value in self.headers:
            headers.add(name, value)
        return UpstreamResponse(self.status, headers, self.body)


def _kept_headers(headers: HTTPHeaders) -> tuple[tuple[str, str], ...]:
    wanted = {name.lower() for name in KEPT_HEADERS}
    return tuple((name, value) for name, value in headers.get_all() if name.lower() in wanted)


def _parse(data: bytes | None) -> KeptList | None:
    """A kept answer; anything unreadable (an older layout, a torn S3 copy) is none at all."""
    if data is None:
        return None
    try:
        raw = json.loads(data)
        headers = tuple((str(name), str(value)) for name, value in raw["headers"])
        return KeptList(float(raw["fetched_at"]), int(raw["status"]), headers, base64.b64decode(raw["body"]))
    except (ValueError, KeyError, TypeError):
        return None
