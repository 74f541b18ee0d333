"""Who may read what regcache cached from a `--private-registry`.

A cached blob is served without the registry, so for a private registry regcache asks first:
a HEAD of the blob, upstream, with the client's own Authorization (or, when the client sends
none, the credentials of `--creds-file`, as any request through the cache would). Only a 2xx lets
the cached copy be served; a refusal (401 with its challenge, 403, 404) goes back to the client,
and a registry that cannot answer (unreachable, 429, 5xx) means no answer from the cache either.
A yes is remembered briefly per credential, repository and digest: a registry serves a blob only
through repositories it belongs to, so a yes for one repository says nothing about another.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from regcache.cache.context import ClientContext
from regcache.oci.reference import BlobRef
from regcache.singleflight import SingleFlight
from regcache.upstream.client import UpstreamClient, UpstreamResponse

ACCESS_TTL = 60.0
MAX_REMEMBERED = 4096


class AccessCheck:
    def __init__(self, upstream: UpstreamClient, private: frozenset[str]) -> None:
        self._upstream = upstream
        self._private = private
        self._allowed: OrderedDict[tuple[str, ...], float] = OrderedDict()
        self._checks: SingleFlight[tuple[str, ...], UpstreamResponse | None] = SingleFlight()

    def applies(self, registry: str) -> bool:
        return registry in self._private

    async def refusal(self, ref: BlobRef, client: ClientContext) -> UpstreamResponse | None:
        """None when the client may read the blob; else the registry's answer to pass on."""
        key = (client.credential_key(), ref.registry, ref.repo, str(ref.digest))
        expires = self._allowed.get(key)
        if expires is not None and expires > time.monotonic():
            return None

        async def check() -> UpstreamResponse | None:
            path = f"/v2/{ref.repo}/blobs/{ref.digest}"
            response = await self._upstream.fetch(client.request(ref.registry, ref.repo, "HEAD", path))
            if not 200 <= response.status < 300:
                return response
            self._allowed[key] = time.monotonic() + ACCESS_TTL
            self._allowed.move_to_end(key)
            while len(self._allowed) > MAX_REMEMBERED:
                self._allowed.popitem(last=False)
            return None

        return await self._checks.run(key, check)
