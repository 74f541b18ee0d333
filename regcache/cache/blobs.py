"""Blobs: served from the store when present, else from one shared upstream download."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

from regcache import metrics
from regcache.cache.access import AccessCheck
from regcache.cache.context import ClientContext
from regcache.cache.fill import Fill, FillHead, FillMap
from regcache.cache.relay import Relay
from regcache.errors import RegcacheError, StorageError
from regcache.oci.reference import BlobRef
from regcache.storage.base import ObjectReader, blob_key, private_blob_key
from regcache.storage.staging import StagingFile
from regcache.storage.tiered import TieredStore
from regcache.upstream.client import UpstreamClient, UpstreamRequest, UpstreamResponse

log = logging.getLogger(__name__)


@dataclass
class StoredBlob:
    reader: ObjectReader


@dataclass
class FillingBlob:
    """A reader attached to a download (its own descriptor on the staging file), whose upstream
    answered 2xx; `hit` when the download had already verified when this reader joined."""

    fill: Fill
    fd: int
    head: FillHead
    hit: bool


@dataclass
class PassedThrough:
    response: UpstreamResponse


BlobAnswer = StoredBlob | FillingBlob | PassedThrough | Relay


class BlobService:
    def __init__(self, store: TieredStore, upstream: UpstreamClient, fills: FillMap, staging_root: Path) -> None:
        self._store = store
        self._upstream = upstream
        self._fills = fills
        self._staging_root = staging_root
        self._access = AccessCheck(upstream)

    async def open(self, ref: BlobRef, client: ClientContext) -> BlobAnswer:
        key = blob_key(ref.digest) if ref.digest.verifiable else None
        if self._access.applies(ref.registry):
            # Private: the registry says whether this client may read it, cached or not.
            refused = await self._access.refusal(ref, client)
            if refused is not None:
                return PassedThrough(refused)
            key = private_blob_key(ref.registry, ref.digest) if key is not None else None
        if key is not None:
            found = await self._store.open(key)
            if found is not None:
                return StoredBlob(found[0])
        if client.method == "HEAD":
            return PassedThrough(await self._upstream.fetch(self._request(ref, client, "HEAD")))
        try:
            fill = self._fills.get(key) if key is not None else None
            if fill is not None and fill.error is None:
                joined = await self._join(fill, ref, client)
                if joined is not None:
                    return joined
            return await self._start(ref, client, key)
        except StorageError as exc:
            # The cache cannot take it (full disk, unwritable dir): the pull goes on uncached.
            relay = await Relay.start(self._upstream.fetch, self._request(ref, client, "GET"), ref.digest, exc)
            return relay if relay.ok else PassedThrough(relay.response)

    async def _join(self, fill: Fill, ref: BlobRef, client: ClientContext) -> BlobAnswer | None:
        """Read along with a download in flight; None when its answer was meant for someone else.

        One download serves every client of a digest, but an error answer (401 with another
        repository's challenge, 404 in another registry) belongs to the request that got it.
        """
        metrics.FILL_JOINS.inc()
        verified = fill.verified
        fd = fill.attach()
        try:
            head = await fill.head
        except RegcacheError:
            fill.detach(fd)
            if fill.identity == self._identity(ref, client):
                raise
            return None
        if head.ok:
            return FillingBlob(fill, fd, head, hit=verified)
        fill.detach(fd)
        if fill.identity == self._identity(ref, client):
            return PassedThrough(head.response)
        return None

    async def _start(self, ref: BlobRef, client: ClientContext, key: str | None) -> BlobAnswer:
        try:
            staging = StagingFile(self._staging_root)
        except OSError as exc:
            metrics.STORAGE_ERRORS.labels("staging", "create").inc()
            log.debug("cannot stage a download in %s: %s", self._staging_root, exc)  # relay.py reports it
            raise StorageError(
                f"cache storage unavailable ({exc.strerror}); fetch {ref.digest} from the registry"
            ) from exc
        # The map key is the store key unless another download of it is still in the map (one
        # whose answer was not for this client); unverifiable digests are never coalesced.
        map_key = key if key is not None and self._fills.get(key) is None else f"private/{uuid.uuid4().hex}"
        fill = Fill(map_key, ref.registry, ref.digest, staging, self._identity(ref, client))
        request = self._request(ref, client, "GET")

        async def fetch(sink: Fill) -> UpstreamResponse:
            return await self._upstream.fetch(request, sink)

        async def commit(staging: StagingFile) -> bool:
            assert key is not None
            return await self._store.commit(key, staging)

        fd = fill.attach()
        self._fills.start(fill, fetch, commit if key is not None else None)
        try:
            head = await fill.head
        except RegcacheError:
            fill.detach(fd)
            raise
        if not head.ok:
            fill.detach(fd)
            return PassedThrough(head.response)
        return FillingBlob(fill, fd, head, hit=False)

    @staticmethod
    def _identity(ref: BlobRef, client: ClientContext) -> tuple[str, str, str]:
        return (ref.registry, ref.repo, client.credential_key())

    @staticmethod
    def _request(ref: BlobRef, client: ClientContext, method: str) -> UpstreamRequest:
        return UpstreamRequest(
            registry=ref.registry,
            repo=ref.repo,
            method=method,
            path=f"/v2/{ref.repo}/blobs/{ref.digest}",
            client_authorization=client.authorization,
        )
