"""What may be stored: --cache-manifests, --skip-tags and --private-registry, decided in one place."""

from __future__ import annotations

import re
from dataclasses import dataclass

from regcache.config import Settings
from regcache.oci.reference import ManifestRef


@dataclass(frozen=True)
class Policy:
    cache_manifests: bool = True
    skip_tags: re.Pattern[str] | None = None
    private_registries: frozenset[str] = frozenset()

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(settings.cache_manifests, settings.skip_tags, settings.private_registries)

    def manifest_skip_reason(self, ref: ManifestRef) -> str | None:
        """Why a manifest must be fetched and not stored, or None when it may be cached."""
        if not self.cache_manifests:
            return "cache-manifests=no"
        if ref.registry in self.private_registries:
            return "private-registry"
        if ref.digest is not None and not ref.digest.verifiable:
            return "unverifiable-digest"
        if ref.tag is not None and self.skip_tags is not None and self.skip_tags.search(ref.tag):
            return "skip-tags"
        return None
