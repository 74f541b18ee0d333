"""What of a client's request the cache layer needs, parsed once by the web layer."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class ClientContext:
    """What of the client's request matters upstream."""

    method: str
    authorization: str | None
    accept: tuple[str, ...] = ()

    def credential_key(self) -> str:
        """Tells requests made with different credentials apart, without keeping them."""
        return hashlib.sha256(self.authorization.encode()).hexdigest() if self.authorization else ""
