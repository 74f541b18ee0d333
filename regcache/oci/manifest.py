"""What a stored manifest refers to: an index's manifests, an image manifest's config and layers.

Pure: the operator's commands use it to know which blobs a manifest needs (so none a kept
manifest needs is removed) and which manifests an index lists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from regcache.oci.digest import Digest


@dataclass(frozen=True)
class References:
    manifests: tuple[Digest, ...] = ()  # an index's (or manifest list's) entries
    blobs: tuple[Digest, ...] = ()  # config and layers (schema 1: fsLayers)
    readable: bool = True  # False: not JSON, or not a manifest regcache understands


UNREADABLE = References(readable=False)


def json_object(data: bytes | None) -> dict | None:
    """A stored JSON object (a tag pointer, manifest metadata); anything else, torn or foreign, is none."""
    if data is None:
        return None
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def references(body: bytes) -> References:
    """The digests a manifest body names, whatever its media type (the body says which it is)."""
    document = json_object(body)
    if document is None:
        return UNREADABLE
    if isinstance(document.get("manifests"), list):
        return References(manifests=_digests(document["manifests"], "digest"))
    blobs: list[Digest] = []
    config = document.get("config")
    if isinstance(config, dict):
        blobs.extend(_digests([config], "digest"))
    if isinstance(document.get("layers"), list):
        blobs.extend(_digests(document["layers"], "digest"))
    if isinstance(document.get("fsLayers"), list):
        blobs.extend(_digests(document["fsLayers"], "blobSum"))
    if not blobs and "config" not in document and "fsLayers" not in document:
        return UNREADABLE
    return References(blobs=tuple(dict.fromkeys(blobs)))


def _digests(descriptors: list[object], field: str) -> tuple[Digest, ...]:
    found = []
    for descriptor in descriptors:
        digest = Digest.parse_or_none(descriptor.get(field)) if isinstance(descriptor, dict) else None
        if digest is not None:
            found.append(digest)
    return tuple(found)
