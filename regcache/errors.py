"""Domain errors, raised below `web/` and mapped to HTTP answers in one table there.

Each carries what the client needs to hear (an OCI error code and a message that names the
problem); none carries a credential.
"""

from __future__ import annotations


class RegcacheError(Exception):
    """Base of every error regcache raises on purpose."""


class ConfigError(RegcacheError):
    """A setting, option or file that stops start-up; the message names it."""


class BadRequest(RegcacheError):
    """The client's request cannot be understood (bad name, reference, digest, range, ns)."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


class UpstreamError(RegcacheError):
    """The upstream registry could not be reached or broke off mid-answer."""

    def __init__(self, registry: str, message: str) -> None:
        super().__init__(f"upstream {registry}: {message}")
        self.message = message


class DigestMismatch(RegcacheError):
    """Bytes from upstream did not hash to the digest they were asked for (or announced)."""

    def __init__(self, registry: str, expected: str, actual: str) -> None:
        super().__init__(f"upstream {registry}: content digest {actual} does not match {expected}")


class SizeMismatch(RegcacheError):
    """The upstream sent fewer or more bytes than its Content-Length announced."""

    def __init__(self, registry: str, expected: int, actual: int) -> None:
        super().__init__(f"upstream {registry}: got {actual} bytes, announced {expected}")


class ManifestTooLarge(RegcacheError):
    """A manifest over the distribution spec's 4 MiB limit."""

    def __init__(self, registry: str, size: int, limit: int) -> None:
        super().__init__(f"upstream {registry}: manifest of {size} bytes exceeds {limit}")


class ListTooLarge(RegcacheError):
    """A tag list or referrers answer bigger than the cache holds in memory to pass on."""

    def __init__(self, registry: str, kind: str, limit: int) -> None:
        super().__init__(f"upstream {registry}: {kind} answer exceeds {limit} bytes")


class StorageError(RegcacheError):
    """A tier failed to read or write; pulls go on without it."""


class Overloaded(RegcacheError):
    """More downloads, or more readers of one, than the limits allow: the client should get the
    object from the registry itself (503), not wait for the cache."""


class Offline(RegcacheError):
    """regcache runs with --offline and what was asked is not cached: no registry may be asked.

    Not an UpstreamError: nothing failed, so nothing retries, resumes or serves stale on it.
    """

    def __init__(self, registry: str, path: str) -> None:
        super().__init__(
            f"regcache is offline (--offline): {registry}{_shown(path)} is not in the cache and no registry is contacted"
        )
        self.kind = "manifest" if "/manifests/" in path else "blob" if "/blobs/" in path else "other"


def _shown(path: str) -> str:
    """`/v2/library/alpine/manifests/3.20` as `/library/alpine:3.20` (or `@sha256:…`)."""
    for part, sep in (("/manifests/", ":"), ("/blobs/", "@")):
        repo, found, reference = path.removeprefix("/v2").partition(part)
        if found:
            return f"{repo}{'@' if ':' in reference else sep}{reference}"
    return path
