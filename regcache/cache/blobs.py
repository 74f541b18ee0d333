"""Blobs: served from the store when present, else from one shared download.

The service answers with a small value the web layer sends as it is: a `Body` (bytes from a
source, or only headers for a HEAD), a `Redirect`, or an `UpstreamAnswer` to pass on.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

from regcache import metrics
from regcache.cache.access import AccessCheck
from regcache.cache.context import ClientContext
from regcache.cache.fill import Fill, FillMap
from regcache.cache.origins import FallbackOrigin, Origin, S3Origin, UpstreamOrigin
from regcache.cache.passthrough import Unsatisfied, open_uncached
from regcache.cache.policy import Policy
from regcache.cache.ranges import RangeSpec
from regcache.cache.spool import Spool, SpoolReader
from regcache.errors import RegcacheError, StorageError
from regcache.oci.digest import Digest
from regcache.oci.reference import BlobRef
from regcache.storage.base import ByteSource, blob_key, private_blob_key
from regcache.storage.health import StorageHealth
from regcache.storage.tiered import TieredStore
from regcache.upstream.client import UpstreamClient, UpstreamRequest, UpstreamResponse

log = logging.getLogger(__name__)

# How long a presigned S3 URL handed to a client stays valid.
REDIRECT_EXPIRY = 600


@dataclass
class Body:
    """An object to send: its bytes (None for a HEAD) and how the request counts. Its source
    can deliver any range of it that the client asked (the web layer answers 206 or 416)."""

    digest: Digest
    size: int | None
    source: ByteSource | None
    result: str  # containerd_cache_total: hit, miss or skip
    served_from: str  # regcache_served_bytes: disk, upstream or s3

    async def aclose(self) -> None:
        if self.source is not None:
            await self.source.aclose()


@dataclass(frozen=True)
class Redirect:
    """The client fetches it elsewhere (a presigned S3 URL): large layers skip this process."""

    url: str
    digest: Digest


@dataclass(frozen=True)
class UpstreamAnswer:
    """The registry's answer, passed on unchanged (a refusal, a HEAD we do not answer)."""

    response: UpstreamResponse


BlobAnswer = Body | Redirect | UpstreamAnswer


class BlobService:
    def __init__(
        self,
        store: TieredStore,
        upstream: UpstreamClient,
        fills: FillMap,
        staging_root: Path,
        health: StorageHealth,
        s3_redirect: bool,
        policy: Policy,
    ) -> None:
        self._store = store
        self._upstream = upstream
        self._fills = fills
        self._staging_root = staging_root
        self._health = health
        # --s3-redirect: a blob only in S3 is answered with a presigned URL.
        self._s3_redirect = s3_redirect
        self._policy = policy
        self._access = AccessCheck(upstream, self._policy.private_registries)

    async def head(self, ref: BlobRef, client: ClientContext) -> Body | UpstreamAnswer:
        """What a HEAD is told; never starts a download. The registry's 2xx with a length is
        told as the cache tells what it holds, so a Range on a HEAD is answered alike."""
        skipped = self._policy.repo_is_skipped(ref.registry, ref.repo)  # --skip-repos: ask the registry
        key, refused = (None, None) if skipped else await self._authorize(ref, client)
        if refused is not None:
            return refused
        if key is not None:
            stored = await self._store.open(key)
            if stored is not None:
                await stored.aclose()
                return Body(ref.digest, stored.size, None, "hit", "disk")
            shared = await self._store.stat_shared(key)
            if shared is not None:
                return Body(ref.digest, shared.size, None, "hit", "s3")
        answer = await self._upstream.fetch(_request(ref, client, "HEAD"))
        length = answer.headers.get("Content-Length", "")
        if 200 <= answer.status < 300 and length.isdigit():
            return Body(ref.digest, int(length), None, "skip", "upstream")
        return UpstreamAnswer(answer)

    async def get(self, ref: BlobRef, client: ClientContext, wanted: RangeSpec | None = None) -> BlobAnswer:
        """`wanted`: the range the client asked; only a pass-through needs it before the answer
        (stored and in-flight sources serve any range)."""
        if self._policy.repo_is_skipped(ref.registry, ref.repo):
            # --skip-repos: the registry decides what this client may read, and nothing stays.
            return await self._streamed(ref, client, wanted)
        key, refused = await self._authorize(ref, client)
        if refused is not None:
            return refused
        if key is not None:
            stored = await self._store.open(key)
            if stored is not None:
                return Body(ref.digest, stored.size, stored, "hit", "disk")
        try:
            joined = await self._join(key, ref, client)
            if joined is not None:
                return joined
            origin: Origin = UpstreamOrigin(self._upstream, _request(ref, client, "GET"))
            if key is not None and self._store.has_shared:
                in_shared = await self._store.stat_shared(key) is not None
                # Another client may have started the download while S3 was asked: share it.
                joined = await self._join(key, ref, client)
                if joined is not None:
                    return joined
                if in_shared:
                    # Private content is served only to clients whose credentials were checked.
                    if self._s3_redirect and not self._access.applies(ref.registry):
                        try:
                            return Redirect(await self._store.presign(key, REDIRECT_EXPIRY), ref.digest)
                        except Exception as exc:  # noqa: BLE001 - signing is local; stream it instead
                            log.warning("cannot presign %s: %s", key, exc)
                    origin = FallbackOrigin(S3Origin(self._store, key), origin)
            return await self._start(key, ref, client, origin)
        except StorageError as exc:
            # The cache cannot take it (a full disk, an unwritable dir): the pull goes on uncached.
            metrics.STORAGE_PASSTHROUGH.inc()
            self._health.failed(str(exc))
            return await self._streamed(ref, client, wanted)

    async def _authorize(self, ref: BlobRef, client: ClientContext) -> tuple[str | None, UpstreamAnswer | None]:
        """The blob's store key (None: never stored, its digest cannot be checked), or the
        registry's refusal of this client for a private registry's blob."""
        verifiable = ref.digest.verifiable
        if not self._access.applies(ref.registry):
            return (blob_key(ref.digest) if verifiable else None), None
        # Private: the registry says whether this client may read it, cached or not.
        refused = await self._access.refusal(ref, client)
        if refused is not None:
            return None, UpstreamAnswer(refused)
        return (private_blob_key(ref.registry, ref.digest) if verifiable else None), None

    async def _join(self, key: str | None, ref: BlobRef, client: ClientContext) -> BlobAnswer | None:
        """Read along with the download of `key` in flight; None when there is none for us."""
        fill = self._fills.get(key) if key is not None else None
        if fill is None or fill.spool.error is not None:
            return None
        metrics.FILL_JOINS.inc()
        hit = fill.spool.verified
        return await self._answer(fill, fill.reader(self._fills.max_readers), ref, client, hit)

    async def _start(self, key: str | None, ref: BlobRef, client: ClientContext, origin: Origin) -> BlobAnswer:
        self._fills.admit()
        spool = Spool(self._staging_root, ref.registry, ref.digest)

        async def commit(spool: Spool, origin_name: str) -> bool:
            assert key is not None
            # An object that came from S3 is not uploaded there again.
            return await self._store.commit(key, spool.staging, replicate=origin_name == "upstream")

        # Downloads whose digest cannot be checked are never shared or stored.
        map_key = key if key is not None else f"unverifiable/{uuid.uuid4().hex}"
        fill = Fill(map_key, spool, origin, commit if key is not None else None, _identity(ref, client))
        reader = fill.reader(None)
        self._fills.start(fill)
        answer = await self._answer(fill, reader, ref, client, hit=False)
        assert answer is not None  # the starter's identity is the fill's
        return answer

    async def _answer(
        self, fill: Fill, reader: SpoolReader, ref: BlobRef, client: ClientContext, hit: bool
    ) -> BlobAnswer | None:
        """A reader of a fill once its origin has answered. One download serves every client of
        a digest, but an error answer belongs to the request that got it: others ask again."""
        mine = fill.identity == _identity(ref, client)
        try:
            head = await fill.head
        except RegcacheError:
            await reader.aclose()
            if mine:
                raise
            return None
        if head.passed is None:
            # Joining a download that already verified, or a copy from S3, reads cached bytes.
            result = "hit" if hit or head.origin == "s3" else "miss"
            return Body(ref.digest, head.size, reader, result, "disk" if hit else head.origin)
        await reader.aclose()
        return UpstreamAnswer(head.passed) if mine else None

    async def _streamed(self, ref: BlobRef, client: ClientContext, wanted: RangeSpec | None) -> BlobAnswer:
        """The registry's answer streamed through and never stored; verified on the way when it
        is read whole (cache/passthrough.py)."""
        source = await open_uncached(self._upstream, _request(ref, client, "GET"), ref.digest, wanted)
        if isinstance(source, UpstreamResponse):
            return UpstreamAnswer(source)
        if isinstance(source, Unsatisfied):
            return Body(ref.digest, source.size, None, "skip", "upstream")  # the web layer's 416
        return Body(ref.digest, source.size, source, "skip", "upstream")


def _identity(ref: BlobRef, client: ClientContext) -> tuple[str, str, str]:
    return (ref.registry, ref.repo, client.credential_key())


def _request(ref: BlobRef, client: ClientContext, method: str) -> UpstreamRequest:
    return client.request(ref.registry, ref.repo, method, f"/v2/{ref.repo}/blobs/{ref.digest}")
