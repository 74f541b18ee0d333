"""Manifests: by digest they are immutable like blobs; by tag, a stored pointer to a digest.

Manifests are small (4 MiB at most, the distribution spec's limit), so they are fetched whole,
verified, stored by digest and only then pointed to by their tag. Concurrent requests for the
same manifest with the same Accept and credentials share one upstream fetch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass

from regcache import metrics
from regcache.cache.context import ClientContext
from regcache.cache.policy import Policy
from regcache.errors import BadRequest, DigestMismatch, ManifestTooLarge
from regcache.oci import mediatypes
from regcache.oci.digest import Digest
from regcache.oci.reference import ManifestRef
from regcache.storage.base import manifest_key, manifest_meta_key, tag_key
from regcache.storage.tiered import TieredStore
from regcache.upstream.client import UpstreamClient, UpstreamRequest, UpstreamResponse

log = logging.getLogger(__name__)

MAX_MANIFEST_SIZE = 4 * 1024 * 1024


@dataclass(frozen=True)
class Manifest:
    digest: Digest
    media_type: str
    body: bytes


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
        self._inflight: dict[tuple[object, ...], asyncio.Future[ManifestAnswer]] = {}

    async def get(self, ref: ManifestRef, client: ClientContext) -> ManifestAnswer:
        accepted = mediatypes.accepted_types(list(client.accept))
        skip = self._policy.manifest_skip_reason(ref)
        if skip is None:
            manifest = await self._lookup(ref)
            if manifest is not None and mediatypes.allows(accepted, manifest.media_type):
                return ManifestAnswer("hit", manifest)
        # Skipped tags and HEADs of what we will not store go upstream as they came.
        method = "GET" if skip is None or client.method == "GET" else "HEAD"
        key = (ref, method, client.accept, client.credential_key())
        inflight = self._inflight.get(key)
        if inflight is not None:
            return await asyncio.shield(inflight)
        future: asyncio.Future[ManifestAnswer] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            answer = await self._fetch(ref, client, method, store=skip is None)
            future.set_result(answer)
            return answer
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()
            raise
        finally:
            del self._inflight[key]

    async def _lookup(self, ref: ManifestRef) -> Manifest | None:
        """The stored manifest for a ref; anything missing or unreadable is a miss."""
        digest = ref.digest
        if digest is None:
            pointer = _parse_json(await self._store.read_small(tag_key(ref.registry, ref.repo, ref.tag or "")))
            if pointer is None:
                return None
            try:
                digest = Digest.parse(str(pointer.get("digest")))
            except BadRequest:
                return None
        meta = _parse_json(await self._store.read_small(manifest_meta_key(digest)))
        body = await self._store.read_small(manifest_key(digest))
        if meta is None or body is None or Digest.of(body) != digest:
            return None
        return Manifest(digest, str(meta.get("media_type") or mediatypes.OCTET_STREAM), body)

    async def _fetch(self, ref: ManifestRef, client: ClientContext, method: str, store: bool) -> ManifestAnswer:
        headers = {"Accept": ", ".join(client.accept)} if client.accept else {}
        request = UpstreamRequest(
            registry=ref.registry,
            repo=ref.repo,
            method=method,
            path=f"/v2/{ref.repo}/manifests/{ref.reference}",
            headers=headers,
            client_authorization=client.authorization,
            buffered_limit=MAX_MANIFEST_SIZE,
        )
        response = await self._upstream.fetch(request)
        if not 200 <= response.status < 300 or method == "HEAD":
            return ManifestAnswer("skip", passed_through=response)
        if response.truncated:
            raise ManifestTooLarge(ref.registry, MAX_MANIFEST_SIZE + 1, MAX_MANIFEST_SIZE)
        digest = Digest.of(response.body)
        expected = ref.digest
        announced = response.headers.get("Docker-Content-Digest")
        if expected is None and announced:
            try:
                expected = Digest.parse(announced)
            except BadRequest:
                expected = None
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
            pointer = dict(meta, digest=str(manifest.digest), fetched_at=time.time())
            if not await self._store.put_small(tag_key(ref.registry, ref.repo, ref.tag), json.dumps(pointer).encode()):
                return False
        return True


def _parse_json(data: bytes | None) -> dict | None:
    if data is None:
        return None
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
