"""Blobs: served from the store when present, else from one shared upstream download."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tornado.httputil import HTTPHeaders

from regcache import metrics
from regcache.cache.access import AccessCheck
from regcache.cache.context import ClientContext
from regcache.cache.fill import Fill, FillHead, FillMap
from regcache.cache.relay import Relay
from regcache.errors import DigestMismatch, RegcacheError, SizeMismatch, StorageError, UpstreamError
from regcache.oci import mediatypes
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
    # Where its bytes come from: "upstream" (a miss) or "s3" (a hit in the shared tier).
    source: str = "upstream"


@dataclass
class PassedThrough:
    response: UpstreamResponse


@dataclass
class SharedBlob:
    """In S3 and not on the local disk: a HEAD is answered from what S3 says of it."""

    size: int


@dataclass
class RedirectedBlob:
    """In S3 and not on the local disk, and redirects are on: the client fetches it from S3."""

    url: str


BlobAnswer = StoredBlob | FillingBlob | PassedThrough | SharedBlob | RedirectedBlob | Relay

# How long a presigned S3 URL handed to a client stays valid.
REDIRECT_EXPIRY = 600


class BlobService:
    def __init__(
        self,
        store: TieredStore,
        upstream: UpstreamClient,
        fills: FillMap,
        staging_root: Path,
        redirect: Callable[[str], bool] | None = None,
    ) -> None:
        self._store = store
        self._upstream = upstream
        self._fills = fills
        self._staging_root = staging_root
        # Whether a blob of this registry that is only in S3 is answered with a presigned URL.
        self._redirect = redirect or (lambda registry: False)
        self._cleanup: set[asyncio.Task[None]] = set()
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
            reader = await self._store.open(key)
            if reader is not None:
                return StoredBlob(reader)
        try:
            joined = await self._join_in_flight(key, ref, client)
            if joined is not None:
                return joined
            shared = await self._store.stat_shared(key) if key is not None else None
            if shared is not None:
                # Another client may have started the copy while S3 was asked: share it.
                joined = await self._join_in_flight(key, ref, client)
                if joined is not None:
                    return joined
                assert key is not None
                if client.method == "HEAD":
                    return SharedBlob(shared.size)
                if self._redirect(ref.registry) and self._store.shared is not None:
                    try:
                        return RedirectedBlob(await self._store.shared.presign(key, REDIRECT_EXPIRY))
                    except Exception as exc:  # noqa: BLE001 - signing is local; stream it instead
                        log.warning("cannot presign %s: %s", key, exc)
            if client.method == "HEAD":
                return PassedThrough(await self._upstream.fetch(self._request(ref, client, "HEAD")))
            return await self._start(ref, client, key, from_shared=shared is not None)
        except StorageError as exc:
            # The cache cannot take it (full disk, unwritable dir): the pull goes on uncached.
            relay = await Relay.start(self._upstream.fetch, self._request(ref, client, "GET"), ref.digest, exc)
            return relay if relay.ok else PassedThrough(relay.response)

    async def _join_in_flight(self, key: str | None, ref: BlobRef, client: ClientContext) -> BlobAnswer | None:
        """The download of `key` in flight, joined (GET only); None when there is none for us."""
        fill = self._fills.get(key) if key is not None and client.method == "GET" else None
        if fill is None or fill.error is not None:
            return None
        return await self._join(fill, ref, client)

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

    async def _start(self, ref: BlobRef, client: ClientContext, key: str | None, from_shared: bool) -> BlobAnswer:
        try:
            staging = StagingFile(self._staging_root)
        except OSError as exc:
            metrics.TIER_ERRORS.labels("staging", "create").inc()
            log.debug("cannot stage a download in %s: %s", self._staging_root, exc)  # relay.py reports it
            raise StorageError(
                f"cache storage unavailable ({exc.strerror}); fetch {ref.digest} from the registry"
            ) from exc
        # The map key is the store key unless another download of it is still in the map (one
        # whose answer was not for this client); unverifiable digests are never coalesced.
        map_key = key if key is not None and self._fills.get(key) is None else f"private/{uuid.uuid4().hex}"
        fill = Fill(map_key, ref.registry, ref.digest, staging, self._identity(ref, client))
        request = self._request(ref, client, "GET")
        source = ["s3" if from_shared else "upstream"]

        async def fetch(sink: Fill) -> UpstreamResponse:
            if source[0] == "s3":
                assert key is not None
                copied = await self._copy_from_shared(key, ref, sink)
                if copied is not None:
                    return copied
                source[0] = "upstream"  # gone from S3, or S3 failed before the first byte
            return await self._upstream.fetch(request, sink)

        async def commit(staging: StagingFile) -> bool:
            assert key is not None
            return await self._store.commit(key, staging, str(ref.digest), replicate=source[0] == "upstream")

        fd = fill.attach()
        task = self._fills.start(fill, fetch, commit if key is not None else None)
        if from_shared and task is not None:
            task.add_done_callback(lambda _: self._after_shared_copy(fill, source[0], key))
        try:
            head = await fill.head
        except RegcacheError:
            fill.detach(fd)
            raise
        if not head.ok:
            fill.detach(fd)
            return PassedThrough(head.response)
        return FillingBlob(fill, fd, head, hit=False, source=source[0])

    async def _copy_from_shared(self, key: str, ref: BlobRef, sink: Fill) -> UpstreamResponse | None:
        """Stream an S3 object into a fill (verified and stored locally like any download);
        None when S3 cannot deliver it before the first byte, so the upstream is asked instead."""
        shared = self._store.shared
        if shared is None:
            return None
        try:
            opened = await shared.open_stream(key)
        except OSError:
            return None
        if opened is None:
            return None
        info, chunks = opened
        headers = HTTPHeaders(
            {
                "Content-Type": mediatypes.OCTET_STREAM,
                "Content-Length": str(info.size),
                "Docker-Content-Digest": str(ref.digest),
            }
        )
        sink.on_headers(200, headers)
        try:
            async for chunk in chunks:
                sink.on_chunk(chunk)
                await sink.drained()
        except OSError as exc:
            raise UpstreamError("s3", f"the copy of {ref.digest} from S3 broke off: {exc}") from None
        return UpstreamResponse(200, headers)

    def _after_shared_copy(self, fill: Fill, source: str, key: str | None) -> None:
        """An S3 object that failed verification is deleted, so the next pull refetches it."""
        if source == "s3" and key is not None and isinstance(fill.error, (DigestMismatch, SizeMismatch)):
            log.warning("S3 object %s failed verification (%s); deleting it", key, fill.error)
            task = asyncio.get_running_loop().create_task(self._store.delete_shared(key))
            self._cleanup.add(task)
            task.add_done_callback(self._cleanup.discard)

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
