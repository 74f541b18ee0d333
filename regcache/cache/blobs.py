"""Blobs: served from the store when present, else from one shared upstream download."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

from regcache import metrics
from regcache.cache.fill import Fill, FillMap
from regcache.errors import StorageError
from regcache.oci.reference import BlobRef
from regcache.storage.base import ObjectReader, blob_key
from regcache.storage.staging import StagingFile
from regcache.storage.tiered import TieredStore
from regcache.upstream.client import UpstreamClient, UpstreamRequest, UpstreamResponse

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClientContext:
    """What of the client's request matters upstream."""

    method: str
    authorization: str | None
    accept: tuple[str, ...] = ()


@dataclass
class StoredBlob:
    reader: ObjectReader
    source: str


@dataclass
class FillingBlob:
    """A reader attached to a download in flight (its own descriptor on the staging file)."""

    fill: Fill
    fd: int
    joined: bool


@dataclass
class PassedThrough:
    response: UpstreamResponse


BlobAnswer = StoredBlob | FillingBlob | PassedThrough


class BlobService:
    def __init__(self, store: TieredStore, upstream: UpstreamClient, fills: FillMap, staging_root: Path) -> None:
        self._store = store
        self._upstream = upstream
        self._fills = fills
        self._staging_root = staging_root

    async def open(self, ref: BlobRef, client: ClientContext) -> BlobAnswer:
        if ref.digest.verifiable:
            key = blob_key(ref.digest)
            found = await self._store.open(key)
            if found is not None:
                reader, source = found
                return StoredBlob(reader, source)
        else:
            key = f"passthrough/{uuid.uuid4().hex}"
        if client.method == "HEAD":
            return PassedThrough(await self._upstream.fetch(self._request(ref, client, "HEAD")))
        fill = self._fills.get(key)
        if fill is not None:
            metrics.FILL_JOINS.inc()
            return FillingBlob(fill, fill.attach(), joined=True)
        try:
            staging = StagingFile(self._staging_root)
        except OSError as exc:
            metrics.STORAGE_ERRORS.labels("staging", "create").inc()
            log.warning("cannot stage a download in %s: %s", self._staging_root, exc)
            raise StorageError(
                f"cache storage unavailable ({exc.strerror}); fetch {ref.digest} from the registry"
            ) from exc
        fill = Fill(key, ref.registry, ref.digest, staging)
        request = self._request(ref, client, "GET")

        async def fetch(sink: Fill) -> UpstreamResponse:
            return await self._upstream.fetch(request, sink)

        async def commit(staging: StagingFile) -> bool:
            return await self._store.commit(key, staging)

        fd = fill.attach()
        self._fills.start(fill, fetch, commit if ref.digest.verifiable else None)
        return FillingBlob(fill, fd, joined=False)

    @staticmethod
    def _request(ref: BlobRef, client: ClientContext, method: str) -> UpstreamRequest:
        return UpstreamRequest(
            registry=ref.registry,
            repo=ref.repo,
            method=method,
            path=f"/v2/{ref.repo}/blobs/{ref.digest}",
            client_authorization=client.authorization,
        )
