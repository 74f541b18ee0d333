"""Bytes that are checked while they pass: size and sha256, the last byte held back until both
agree, so a client never holds a complete-looking body that is not the object.

Used where the bytes are not stored on the way (the cache's own storage is broken, or
--skip-repos names the repository): a stored object is verified by its spool instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

from regcache import metrics
from regcache.errors import DigestMismatch, SizeMismatch
from regcache.oci.digest import Digest
from regcache.storage.base import ByteSource


class VerifyingSource:
    """A ByteSource read once, whole, from the start."""

    def __init__(self, source: ByteSource, expected: Digest, registry: str) -> None:
        self.size = source.size
        self._source = source
        self._expected = expected
        self._registry = registry

    async def chunks(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        if start != 0 or end not in (None, self.size):
            raise ValueError("a verifying source is read whole")
        sha = hashlib.sha256()
        received = 0
        held = b""  # the last byte so far, sent with the next chunk (or after the verdict)
        async for chunk in self._source.chunks():
            if not chunk:
                continue
            sha.update(chunk)
            received += len(chunk)
            out, held = held + chunk[:-1], chunk[-1:]
            if out:
                yield out
        verify(self._registry, self._expected, self.size, received, sha)
        if held:
            yield held

    async def aclose(self) -> None:
        await self._source.aclose()


def verify(registry: str, expected: Digest | None, size: int | None, received: int, sha256: hashlib._Hash) -> None:
    """The one check every object passes before a client gets its last byte or the cache keeps
    it: `received` bytes hashing to `sha256` are the object (its announced size, its digest
    where one can be checked); else the mismatch is counted and raised."""
    label = metrics.registry_label(registry)
    if size is not None and received != size:
        metrics.VERIFICATION_FAILURES.labels(label, "size").inc()
        raise SizeMismatch(registry, size, received)
    actual = Digest("sha256", sha256.hexdigest())
    if expected is not None and expected.verifiable and actual != expected:
        metrics.VERIFICATION_FAILURES.labels(label, "digest").inc()
        raise DigestMismatch(registry, str(expected), str(actual))
