"""Registry names, repository names and tags, validated once at the edge.

Grammar from the distribution spec: a repository name is lower-case path components joined by
"/", each `[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*`, 255 characters at most; a tag is
`[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from regcache.errors import BadRequest
from regcache.oci.digest import Digest

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
    if ":" in reference:  # a digest: tags cannot hold a colon
        return ManifestRef(registry, repo, digest=Digest.parse(reference))
    if not _TAG_RE.match(reference):
        raise BadRequest("MANIFEST_INVALID", f"invalid tag {reference!r}")
    return ManifestRef(registry, repo, tag=reference)


def parse_blob_ref(registry: str, repo: str, digest: str) -> BlobRef:
    return BlobRef(registry, parse_repo(repo), Digest.parse(digest))


DOCKER_HUB = "docker.io"
_LEGACY_DOCKER_HUB = "index.docker.io"
_HEX64_RE = re.compile(r"^[a-f0-9]{64}$")


@dataclass(frozen=True)
class ImageReference(ManifestRef):
    """An image as containerd names it after normalising: `alpine` is docker.io/library/alpine:latest.

    By digest the tag is dropped, as containerd's ParseDockerRef does: the digest decides.
    """

    def __str__(self) -> str:
        if self.digest is not None:
            return f"{self.registry}/{self.repo}@{self.digest}"
        return f"{self.registry}/{self.repo}:{self.tag}"


def is_tag(text: str) -> bool:
    return _TAG_RE.match(text) is not None


def names_registry(first: str) -> bool:
    """Whether a reference's first component is a registry, as docker and containerd tell it
    from a Docker Hub namespace: a `.` or a port, or `localhost`."""
    return "." in first or ":" in first or first == "localhost"


def parse_image_reference(text: str) -> ImageReference:
    """Normalise an image reference the way containerd and Docker do; BadRequest names the problem.

    The first path component is the registry when it has a `.` or `:` or is `localhost` (or is
    not lower-case, so the repository check can refuse it); anything else is on Docker Hub,
    where a one-component name is under `library/`.
    """
    given = text.strip()
    if not given:
        raise BadRequest("NAME_INVALID", "empty image reference")
    if any(c.isspace() for c in given):
        raise BadRequest("NAME_INVALID", f"invalid image reference {text!r}: contains white space")
    if _HEX64_RE.match(given):
        raise BadRequest("NAME_INVALID", f"invalid image reference {text!r}: a bare 64-hex string is not a name")
    name, at, digest_text = given.partition("@")
    digest = None
    if at:
        try:
            digest = Digest.parse(digest_text)
        except BadRequest as exc:
            raise BadRequest("NAME_INVALID", f"invalid image reference {text!r}: {exc.message}") from None
    tag = None
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
        if not is_tag(tag):
            raise BadRequest("NAME_INVALID", f"invalid image reference {text!r}: invalid tag {tag!r}")
    first, sep, rest = name.partition("/")
    if sep and (names_registry(first) or first.lower() != first):
        registry, repo = first, rest
        if not _REGISTRY_RE.match(registry):
            raise BadRequest("NAME_INVALID", f"invalid image reference {text!r}: invalid registry {registry!r}")
        registry = registry.lower()
    else:
        registry, repo = DOCKER_HUB, name
    if registry == _LEGACY_DOCKER_HUB:
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in repo:
        repo = f"library/{repo}"
    if repo.lower() != repo:
        raise BadRequest("NAME_INVALID", f"invalid image reference {text!r}: repository name must be lower-case")
    if len(repo) > MAX_REPO_LENGTH or not _REPO_RE.match(repo):
        raise BadRequest("NAME_INVALID", f"invalid image reference {text!r}: invalid repository name {repo!r}")
    if digest is not None:
        return ImageReference(registry, repo, digest=digest)
    return ImageReference(registry, repo, tag=tag or "latest")
