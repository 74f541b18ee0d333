"""What may be stored and what served without asking: --cache-manifests, --skip-tags,
--skip-repos, --private-registry, --tag-ttl and --offline, decided in one place."""

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
    tag_ttl: float = 300.0
    skip_repos: re.Pattern[str] | None = None
    # --offline: no registry can say anything fresher, so whatever is stored is the answer.
    offline: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(
            settings.cache_manifests,
            settings.skip_tags,
            settings.private_registries,
            settings.tag_ttl,
            settings.skip_repos,
            settings.offline,
        )

    def repo_is_skipped(self, registry: str, repo: str) -> bool:
        """--skip-repos, searched in `<registry>/<repository>`: such content is never stored,
        manifests and blobs alike, so it is always fetched (and never served from the cache)."""
        return self.skip_repos is not None and self.skip_repos.search(f"{registry}/{repo}") is not None

    def tag_is_fresh(self, fetched_at: float | None, now: float) -> bool:
        """Whether a stored tag may be served without asking the registry (--tag-ttl).

        A pointer without a time (written before tags had one) or from the future (a clock
        that jumped) is due for revalidation. Offline, every stored tag is fresh: there is no
        registry to revalidate it with.
        """
        if self.offline:
            return True
        if fetched_at is None or fetched_at > now + 60:
            return False
        return now - fetched_at < self.tag_ttl

    def manifest_skip_reason(self, ref: ManifestRef) -> str | None:
        """Why a manifest must be fetched and not stored, or None when it may be cached."""
        if not self.cache_manifests:
            return "cache-manifests=no"
        if ref.registry in self.private_registries:
            return "private-registry"
        if self.repo_is_skipped(ref.registry, ref.repo):
            return "skip-repos"
        if ref.digest is not None and not ref.digest.verifiable:
            return "unverifiable-digest"
        # Offline a matching tag cannot be fetched fresh, so a stored one (from a cache that
        # was filled with another --skip-tags) is served rather than refused.
        if ref.tag is not None and self.skip_tags is not None and self.skip_tags.search(ref.tag) and not self.offline:
            return "skip-tags"
        return None
