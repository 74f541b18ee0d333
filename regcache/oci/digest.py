"""Content digests: parsing, and hashing while bytes stream past."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from regcache.errors import BadRequest

# The distribution spec's digest grammar: algorithm ":" encoded.
_DIGEST_RE = re.compile(r"^([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$")
_SHA256_HEX_RE = re.compile(r"^[a-f0-9]{64}$")


@dataclass(frozen=True)
class Digest:
    """A validated digest. Only sha256 digests are verified and stored; others pass through."""

    algorithm: str
    encoded: str

    @classmethod
    def parse(cls, text: str) -> Digest:
        match = _DIGEST_RE.match(text)
        if not match:
            raise BadRequest("DIGEST_INVALID", f"invalid digest {text!r}")
        algorithm, encoded = match.groups()
        if algorithm == "sha256" and not _SHA256_HEX_RE.match(encoded):
            raise BadRequest("DIGEST_INVALID", f"invalid sha256 digest {text!r}: want 64 lower-case hex")
        return cls(algorithm, encoded)

    @classmethod
    def parse_or_none(cls, text: object) -> Digest | None:
        """A digest read from a stored object or an upstream's header; None when it is not one
        (absent, not a string, or not a digest)."""
        if not isinstance(text, str):
            return None
        try:
            return cls.parse(text)
        except BadRequest:
            return None

    @classmethod
    def of(cls, data: bytes) -> Digest:
        return cls("sha256", hashlib.sha256(data).hexdigest())

    @property
    def verifiable(self) -> bool:
        """Whether regcache can check bytes against this digest, and so may store them."""
        return self.algorithm == "sha256"

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.encoded}"
