"""Registry names, repository names and tags, validated once at the edge.

Grammar from the distribution spec: a repository name is lower-case path components joined by
"/", each `[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*`, 255 characters at most; a tag is
`[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from regcache.errors import BadRequest
from regcache.oci.digest import Digest, looks_like_digest

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_REPO_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$")
# A registry as containerd names it in `ns`: host, optional port; IPv6 in brackets.
_REGISTRY_RE = re.compile(
    r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*"
    r"|\[[0-9a-fA-F:.]+\])(?::[0-9]{1,5})?$"
)
MAX_REPO_LENGTH = 255


def parse_registry(text: str) -> str:
    """The origin registry from `ns`, lower-cased; 400 when it is not a host[:port]."""
    if not text or len(text) > 255 or not _REGISTRY_RE.match(text):
        raise BadRequest("NAME_INVALID", f"invalid ns {text!r}: want a registry host[:port]")
    return text.lower()


def parse_repo(text: str) -> str:
    if len(text) > MAX_REPO_LENGTH or not _REPO_RE.match(text):
        raise BadRequest("NAME_INVALID", f"invalid repository name {text!r}")
    return text


@dataclass(frozen=True)
class BlobRef:
    """A blob of a repository in a registry."""

    registry: str
    repo: str
    digest: Digest


@dataclass(frozen=True)
class ManifestRef:
    """A manifest of a repository in a registry, by tag or by digest (exactly one is set)."""

    registry: str
    repo: str
    tag: str | None = None
    digest: Digest | None = None

    @property
    def reference(self) -> str:
        return self.tag if self.tag is not None else str(self.digest)


def parse_manifest_ref(registry: str, repo: str, reference: str) -> ManifestRef:
    repo = parse_repo(repo)
    if looks_like_digest(reference):
        return ManifestRef(registry, repo, digest=Digest.parse(reference))
    if not _TAG_RE.match(reference):
        raise BadRequest("MANIFEST_INVALID", f"invalid tag {reference!r}")
    return ManifestRef(registry, repo, tag=reference)


def parse_blob_ref(registry: str, repo: str, digest: str) -> BlobRef:
    return BlobRef(registry, parse_repo(repo), Digest.parse(digest))
