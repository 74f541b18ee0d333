"""Manifests: by digest they are immutable like blobs; by tag, a stored pointer to a digest.

Manifests are small (4 MiB at most, the distribution spec's limit), so they are fetched whole,
verified, stored by digest and only then pointed to by their tag. Concurrent requests for the
same manifest with the same Accept and credentials share one upstream fetch. A stored tag is
served for --tag-ttl, then revalidated with a HEAD; while the registry cannot answer, it is
served stale.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

from regcache import metrics
from regcache.cache.context import ClientContext
from regcache.cache.policy import Policy
from regcache.errors import DigestMismatch, ManifestTooLarge, UpstreamError
from regcache.oci import mediatypes
from regcache.oci.digest import Digest
from regcache.oci.manifest import json_object
from regcache.oci.reference import ManifestRef
from regcache.singleflight import SingleFlight
from regcache.storage.base import manifest_key, manifest_meta_key, tag_key
from regcache.storage.tiered import TieredStore
from regcache.upstream.client import UpstreamClient, UpstreamRequest, UpstreamResponse

log = logging.getLogger(__name__)

MAX_MANIFEST_SIZE = 4 * 1024 * 1024
# Bytes of manifest bodies kept in memory (content-addressed, so never stale).
HOT_MANIFEST_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Manifest:
    digest: Digest
    media_type: str
    body: bytes


@dataclass(frozen=True)
class _Stored:
    manifest: Manifest
    fetched_at: float | None  # when its tag was last confirmed upstream; None by digest


@dataclass(frozen=True)
class ManifestAnswer:
    """A manifest to serve (with its cache result) or an upstream answer to pass on."""

    result: str
    manifest: Manifest | None = None
    passed_through: UpstreamResponse | None = None


class ManifestService:
    def __init__(self, store: TieredStore, upstream: UpstreamClient, policy: Policy) -> None:
        self._store = store
        self._upstream = upstream
        self._policy = policy
        self._fetches: SingleFlight[tuple[object, ...], ManifestAnswer] = SingleFlight()
        # Hot manifests, verified once: a hit costs a stat instead of two reads and a hash.
        self._hot = HotManifests(HOT_MANIFEST_BYTES)

    async def get(self, ref: ManifestRef, client: ClientContext) -> ManifestAnswer:
        accepted = mediatypes.accepted_types(list(client.accept))
        skip = self._policy.manifest_skip_reason(ref)
        stale: Manifest | None = None
        if skip is None:
            stored = await self._lookup(ref)
            if stored is not None and mediatypes.allows(accepted, stored.manifest.media_type):
                if ref.tag is None or self._policy.tag_is_fresh(stored.fetched_at, time.time()):
                    return ManifestAnswer("hit", stored.manifest)
                # A tag past --tag-ttl: asked about with a HEAD, served if the registry fails.
                stale = stored.manifest
        # Skipped tags and HEADs of what we will not store go upstream as they came.
        method = "GET" if skip is None or client.method == "GET" else "HEAD"
        key = (ref, method, client.accept, client.credential_key(), stale is not None)

        async def fetch() -> ManifestAnswer:
            if stale is None:
                return await self._fetch(ref, client, method, store=skip is None)
            return await self._revalidate(ref, client, stale)

        return await self._fetches.run(key, fetch)

    async def _revalidate(self, ref: ManifestRef, client: ClientContext, stale: Manifest) -> ManifestAnswer:
        """A stored tag past its TTL: a HEAD tells whether it still points where it did.

        Registries that count pulls (Docker Hub) do not count HEADs. When the registry cannot
        answer (unreachable, 429, 5xx) the stored manifest is served: a stale tag beats a failed
        pull. Its refusals (401, 403, 404) are the client's to see.
        """
        try:
            head = await self._upstream.fetch(self._request(ref, client, "HEAD"))
        except UpstreamError as exc:
            return self._serve_stale(ref, stale, exc.message)
        if upstream_unavailable(head.status):
            return self._serve_stale(ref, stale, f"answered {head.status}")
        if not 200 <= head.status < 300:
            return ManifestAnswer("skip", passed_through=head)
        if Digest.parse_or_none(head.headers.get("Docker-Content-Digest")) == stale.digest:
            pointer = self._pointer(stale)
            await self._store.put_small(tag_key(ref.registry, ref.repo, ref.tag or ""), pointer)
            return ManifestAnswer("hit", stale)
        try:
            answer = await self._fetch(ref, client, "GET", store=True)
        except UpstreamError as exc:
            return self._serve_stale(ref, stale, exc.message)
        if answer.passed_through is not None and upstream_unavailable(answer.passed_through.status):
            return self._serve_stale(ref, stale, f"answered {answer.passed_through.status}")
        return answer

    @staticmethod
    def _serve_stale(ref: ManifestRef, stale: Manifest, reason: str) -> ManifestAnswer:
        metrics.STALE_SERVED.labels(metrics.registry_label(ref.registry), "tag").inc()
        log.warning(
            "tag %s/%s:%s: registry %s; serving the stored %s", ref.registry, ref.repo, ref.tag, reason, stale.digest
        )
        return ManifestAnswer("hit", stale)

    async def _lookup(self, ref: ManifestRef) -> _Stored | None:
        """The stored manifest for a ref; anything missing or unreadable is a miss."""
        digest = ref.digest
        fetched_at: float | None = None
        if digest is None:
            pointer = json_object(await self._store.read_small(tag_key(ref.registry, ref.repo, ref.tag or ""))) or {}
            digest = Digest.parse_or_none(pointer.get("digest"))
            if digest is None:
                return None
            raw_time = pointer.get("fetched_at")
            fetched_at = float(raw_time) if isinstance(raw_time, (int, float)) else None
        manifest = self._hot.get(digest)
        if manifest is not None and self._store.exists_locally(manifest_key(digest)):
            # Still on disk (an operator's clean-up is honoured): serve the verified copy.
            return _Stored(manifest, fetched_at)
        meta = json_object(await self._store.read_small(manifest_meta_key(digest)))
        body = await self._store.read_small(manifest_key(digest))
        if meta is None or body is None or Digest.of(body) != digest:
            return None
        manifest = Manifest(digest, str(meta.get("media_type") or mediatypes.OCTET_STREAM), body)
        self._hot.put(digest, manifest)
        return _Stored(manifest, fetched_at)

    @staticmethod
    def _request(ref: ManifestRef, client: ClientContext, method: str) -> UpstreamRequest:
        path = f"/v2/{ref.repo}/manifests/{ref.reference}"
        return client.request(ref.registry, ref.repo, method, path, accept=True, limit=MAX_MANIFEST_SIZE)

    @staticmethod
    def _pointer(manifest: Manifest) -> bytes:
        return json.dumps(
            {
                "media_type": manifest.media_type,
                "size": len(manifest.body),
                "digest": str(manifest.digest),
                "fetched_at": time.time(),
            }
        ).encode()

    async def _fetch(self, ref: ManifestRef, client: ClientContext, method: str, store: bool) -> ManifestAnswer:
        response = await self._upstream.fetch(self._request(ref, client, method))
        if not 200 <= response.status < 300 or method == "HEAD":
            return ManifestAnswer("skip", passed_through=response)
        if response.truncated:
            raise ManifestTooLarge(ref.registry, MAX_MANIFEST_SIZE + 1, MAX_MANIFEST_SIZE)
        digest = Digest.of(response.body)
        expected = ref.digest or Digest.parse_or_none(response.headers.get("Docker-Content-Digest"))
        if expected is not None and expected.verifiable and expected != digest:
            metrics.VERIFICATION_FAILURES.labels(metrics.registry_label(ref.registry), "digest").inc()
            log.warning("manifest %s/%s:%s: %s", ref.registry, ref.repo, ref.reference, "digest mismatch; not stored")
            raise DigestMismatch(ref.registry, str(expected), str(digest))
        media_type = response.headers.get("Content-Type", mediatypes.OCTET_STREAM).split(";", 1)[0].strip()
        manifest = Manifest(digest, media_type, response.body)
        if not store:
            return ManifestAnswer("skip", manifest)
        # What a tag resolves to depends on Accept: a client that takes no index gets one
        # platform's manifest. Only an answer to a client that takes anything is the tag's.
        accepted = mediatypes.accepted_types(list(client.accept))
        tag_fits_everyone = accepted is None or bool(accepted & mediatypes.INDEX_TYPES)
        stored = await self._store_manifest(ref, manifest, write_tag=tag_fits_everyone)
        return ManifestAnswer("miss" if stored else "skip", manifest)

    async def _store_manifest(self, ref: ManifestRef, manifest: Manifest, write_tag: bool) -> bool:
        """Manifest first, then its metadata, then the tag: a tag never points at nothing."""
        meta = {"media_type": manifest.media_type, "size": len(manifest.body)}
        if not await self._store.put_small(manifest_key(manifest.digest), manifest.body):
            return False
        if not await self._store.put_small(manifest_meta_key(manifest.digest), json.dumps(meta).encode()):
            return False
        if ref.tag is not None and write_tag:
            if not await self._store.put_small(tag_key(ref.registry, ref.repo, ref.tag), self._pointer(manifest)):
                return False
        return True


def upstream_unavailable(status: int) -> bool:
    """Answers that mean "not now" (rate limit, outage), as opposed to a refusal."""
    return status == 429 or status >= 500


class HotManifests:
    """A byte-bounded LRU of verified manifests by digest."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._bytes = 0
        self._items: OrderedDict[Digest, Manifest] = OrderedDict()

    def get(self, digest: Digest) -> Manifest | None:
        manifest = self._items.get(digest)
        if manifest is not None:
            self._items.move_to_end(digest)
        return manifest

    def put(self, digest: Digest, manifest: Manifest) -> None:
        if len(manifest.body) > self._limit or digest in self._items:
            return
        self._items[digest] = manifest
        self._bytes += len(manifest.body)
        while self._bytes > self._limit:
            _, dropped = self._items.popitem(last=False)
            self._bytes -= len(dropped.body)
