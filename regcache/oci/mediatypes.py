"""Manifest media types and the Accept matching that decides whether a cached tag fits a client."""

from __future__ import annotations

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"
OCTET_STREAM = "application/octet-stream"

MANIFEST_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST, DOCKER_SCHEMA1)
INDEX_TYPES = frozenset((OCI_INDEX, DOCKER_LIST))


def accepted_types(accept_headers: list[str]) -> frozenset[str] | None:
    """The media types a client accepts, or None when it accepts anything.

    Clients send Accept as several headers or one comma-separated list, with q-values that no
    registry honours; a missing header or a wildcard means anything goes.
    """
    types: set[str] = set()
    for header in accept_headers:
        for part in header.split(","):
            media_type = part.split(";", 1)[0].strip().lower()
            if not media_type:
                continue
            if media_type in ("*/*", "application/*"):
                return None
            types.add(media_type)
    return frozenset(types) if types else None


def allows(accepted: frozenset[str] | None, media_type: str) -> bool:
    return accepted is None or media_type.lower() in accepted
