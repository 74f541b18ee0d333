"""What of a client's request the cache layer needs, parsed once by the web layer."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from regcache.upstream.client import MAX_ERROR_BODY, UpstreamRequest


@dataclass(frozen=True)
class ClientContext:
    """What of the client's request matters upstream."""

    method: str
    authorization: str | None
    accept: tuple[str, ...] = ()

    def credential_key(self) -> str:
        """Tells requests made with different credentials apart, without keeping them."""
        return hashlib.sha256(self.authorization.encode()).hexdigest() if self.authorization else ""

    def request(
        self, registry: str, repo: str, method: str, path: str, accept: bool = False, limit: int = MAX_ERROR_BODY
    ) -> UpstreamRequest:
        """What the registry is asked on this client's behalf: with its Authorization, and its
        Accept where the answer depends on it (manifests, lists)."""
        headers = {"Accept": ", ".join(self.accept)} if accept and self.accept else {}
        return UpstreamRequest(registry, repo, method, path, headers, self.authorization, limit)
