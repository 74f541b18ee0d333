"""The shared S3 tier: the same key layout as the disk, under an optional prefix, in one bucket
that every replica reads and writes.

Every S3 call goes through `_call`, which translates botocore's and aiohttp's errors into
`TierUnavailable` (an OSError, like a disk failure) and keeps a circuit breaker: after a failure
the tier reports itself down for a backoff period, so lookups skip it at once instead of making
every pull wait for a timeout while S3 is unreachable. One WARNING per burst of failures, one
INFO when it answers again; every failure is counted in `regcache_tier_errors_total`.

Uploads ask S3 to verify the bytes: `ChecksumSHA256` (for a single PUT of a blob that is the
blob's own digest, so S3 refuses anything that is not the blob); a store that neither checks nor
echoes the checksum is switched to `Content-MD5`, which every S3 implementation checks. A file
larger than a part goes up as one multipart upload (create, parts, complete, or abort on any
failure so no parts are left behind). Parts are sized from the object (as s3fs's `_put_file`
does): 16 MiB, a few in memory at once, unless S3's 10,000-part limit needs larger ones.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import datetime
from typing import Any, TypeVar

from regcache import metrics
from regcache.breaker import CircuitBreaker
from regcache.errors import ConfigError
from regcache.storage.base import (
    CHUNK,
    ContentRejected,
    ObjectInfo,
    StagedObject,
    TierUnavailable,
    content_type,
    key_digest,
)
from regcache.storage.multipart import MIN_PART_SIZE, ChecksumIgnored, checksum, confirm, part_size, read_range

log = logging.getLogger(__name__)

T = TypeVar("T")

# A lookup that takes longer than this is treated as a failure: the pull goes upstream instead.
LOOKUP_TIMEOUT = 5.0
# How long the bucket has to answer the start-up check.
CHECK_TIMEOUT = 10.0
_MISSING = frozenset(("404", "NoSuchKey", "NotFound"))
_REJECTED = frozenset(("BadDigest", "InvalidDigest", "XAmzContentChecksumMismatch", "XAmzContentSHA256Mismatch"))
PARALLEL_PARTS = 3
# One PUT of at most a part's size, or a completion: a store that accepts the connection and
# then never answers must not hold an upload lane forever.
WRITE_TIMEOUT = 120.0


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def _describe(exc: BaseException) -> str:
    code = _error_code(exc)
    if code:
        message = getattr(exc, "response", {}).get("Error", {}).get("Message") or ""
        return f"{code}: {message}".rstrip(": ") if message and message != code else code
    return f"{type(exc).__name__}: {exc}"


def _timestamp(value: object) -> float | None:
    """botocore's LastModified (a datetime) as seconds since the epoch."""
    return value.timestamp() if isinstance(value, datetime) else None


class S3Source:
    """An S3 object's bytes: each `chunks` call is one ranged GET, so a range costs only itself."""

    def __init__(self, tier: S3Tier, key: str, size: int) -> None:
        self._tier = tier
        self._key = key
        self.size = size

    async def chunks(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        end = self.size if end is None else end
        if start < end:
            async for chunk in self._tier.get_range(self._key, start, end):
                yield chunk

    async def aclose(self) -> None:
        pass  # each `chunks` call closes its own answer


class S3Tier:
    name = "s3"

    def __init__(self, bucket: str, prefix: str = "") -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint = "(AWS default)"
        self.breaker = CircuitBreaker()
        self._client: Any = None
        self._stack = AsyncExitStack()
        # Until the store shows that it ignores ChecksumSHA256; then Content-MD5.
        self._sha256 = True

    # --- life cycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Create the client from the standard AWS chain (env, profile, web identity, IMDS)."""
        from aiobotocore.session import get_session
        from botocore.config import Config

        custom_endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        config = Config(
            # S3-compatible stores (SeaweedFS, MinIO, Ceph) are addressed by path, not by a
            # bucket-named host that their DNS does not have.
            s3={"addressing_style": "path" if custom_endpoint else "auto"},
            connect_timeout=3,
            read_timeout=20,
            retries={"max_attempts": 2, "mode": "standard"},
            max_pool_connections=32,
            # Only what the operation requires: newer botocore otherwise adds CRC trailers that
            # some S3-compatible stores refuse.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        session = get_session()
        self._client = await self._stack.enter_async_context(session.create_client("s3", config=config))
        self.endpoint = str(self._client.meta.endpoint_url)

    @classmethod
    async def open_checked(cls, bucket: str, prefix: str = "") -> S3Tier:
        """A started tier whose bucket answered; ConfigError (the client closed) when it did not,
        in one line naming the bucket, the endpoint and the error. The server refuses to start on
        it within seconds, an operator's command reports it."""
        tier = cls(bucket, prefix)
        await tier.start()
        try:
            await asyncio.wait_for(
                tier._client.list_objects_v2(Bucket=bucket, Prefix=tier.prefix, MaxKeys=1), CHECK_TIMEOUT
            )
        except Exception as exc:  # noqa: BLE001 - every failure is reported the same way
            await tier.close()
            why = f"no answer within {CHECK_TIMEOUT:.0f}s" if isinstance(exc, TimeoutError) else _describe(exc)
            raise ConfigError(f"S3 bucket {bucket!r} at {tier.endpoint}: {why}") from None
        return tier

    async def close(self) -> None:
        await self._stack.aclose()

    # --- the one way in -----------------------------------------------------------------------
    async def _call(
        self, op: str, call: Callable[[], Awaitable[T]], timeout: float | None = None, missing_ok: bool = False
    ) -> T | None:
        """Run one S3 call; None for "no such key" where `missing_ok` (reads and deletes),
        TierUnavailable for every other failure (a write answered 404 is a failure too)."""
        if not self.breaker.available:
            raise TierUnavailable(f"S3 {op}: skipped, the bucket failed moments ago")
        try:
            result = await (call() if timeout is None else asyncio.wait_for(call(), timeout))
        except Exception as exc:  # noqa: BLE001 - translated here, where foreign errors enter
            if missing_ok and _error_code(exc) in _MISSING:
                self._succeeded()
                return None
            if _error_code(exc) in _REJECTED:
                # S3 works; these bytes are wrong. Not an outage: no breaker, no retry.
                metrics.TIER_ERRORS.labels(self.name, "rejected").inc()
                raise ContentRejected(f"S3 {op}: {_describe(exc)}") from None
            self._failed(op, exc)
            raise TierUnavailable(f"S3 {op}: {_describe(exc) or 'timed out'}") from None
        self._succeeded()
        return result

    def _failed(self, op: str, exc: BaseException) -> None:
        metrics.TIER_ERRORS.labels(self.name, op).inc()
        first = self.breaker.failures == 0
        backoff = self.breaker.failed()
        if first:
            log.warning(
                "S3 bucket %s at %s: %s failed (%s); serving from local disk and upstream, retrying in %.0fs",
                self.bucket,
                self.endpoint,
                op,
                _describe(exc) or "timed out",
                backoff,
            )

    def _succeeded(self) -> None:
        if self.breaker.succeeded():
            log.info("S3 bucket %s answers again", self.bucket)

    def _key(self, key: str) -> str:
        return self.prefix + key

    # --- reads --------------------------------------------------------------------------------
    async def stat(self, key: str) -> ObjectInfo | None:
        head = await self._call(
            "head",
            lambda: self._client.head_object(Bucket=self.bucket, Key=self._key(key)),
            LOOKUP_TIMEOUT,
            missing_ok=True,
        )
        if head is None:
            return None
        digest = (head.get("Metadata") or {}).get("digest")
        return ObjectInfo(key, int(head["ContentLength"]), digest, _timestamp(head.get("LastModified")))

    async def open(self, key: str) -> S3Source | None:
        found = await self.stat(key)
        return None if found is None else S3Source(self, key, found.size)

    async def get_range(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes [start, end) of the object in chunks; TierUnavailable when S3 cannot deliver
        all of them (a dropped stream, an answer of another length), FileNotFoundError if gone."""
        answer = await self._call(
            "get",
            lambda: self._client.get_object(Bucket=self.bucket, Key=self._key(key), Range=f"bytes={start}-{end - 1}"),
            LOOKUP_TIMEOUT,
            missing_ok=True,
        )
        if answer is None:
            raise FileNotFoundError("get")
        async with answer["Body"] as body:
            if int(answer["ContentLength"]) != end - start:
                raise TierUnavailable(f"S3 get: asked for {end - start} bytes of {key}, got {answer['ContentLength']}")
            position = start
            while position < end:
                try:
                    chunk = await body.read(min(CHUNK, end - position))
                except Exception as exc:  # noqa: BLE001 - a dropped S3 stream, translated
                    self._failed("get", exc)
                    raise TierUnavailable(f"S3 get: {_describe(exc)}") from None
                if not chunk:
                    raise TierUnavailable(f"S3 get: {key} broke off at byte {position} of {end}")
                position += len(chunk)
                yield chunk

    async def read_small(self, key: str) -> bytes | None:
        async def get() -> bytes:
            answer = await self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            async with answer["Body"] as body:
                return await body.read()

        return await self._call("get", get, LOOKUP_TIMEOUT, missing_ok=True)

    async def presign(self, key: str, expires: int) -> str:
        return await self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=expires
        )

    async def entries(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        """The listing's sizes and LastModified (the upload: S3 records no later use)."""
        query = {"Bucket": self.bucket, "Prefix": self._key(prefix)}
        while True:
            page = await self._call("list", lambda: self._client.list_objects_v2(**query), LOOKUP_TIMEOUT)
            for item in page.get("Contents", []):
                key = item["Key"][len(self.prefix) :]
                yield ObjectInfo(key, int(item["Size"]), modified=_timestamp(item.get("LastModified")))
            if not page.get("IsTruncated"):
                return
            query["ContinuationToken"] = page["NextContinuationToken"]

    # --- writes -------------------------------------------------------------------------------
    async def delete(self, key: str) -> None:
        await self._call(
            "delete", lambda: self._client.delete_object(Bucket=self.bucket, Key=self._key(key)), missing_ok=True
        )

    async def commit(self, key: str, staged: StagedObject) -> None:
        """Upload a verified file under `key`: visible only once whole. The digest the key names
        is recorded as metadata and, for a single PUT, sent as the checksum S3 must verify."""
        digest = key_digest(key)
        meta = {"digest": str(digest)} if digest else {}
        if staged.size > MIN_PART_SIZE:
            await self._checked(lambda sha256: self._send_parts(key, staged, sha256, meta))
            return
        data = await asyncio.to_thread(read_range, staged.path, 0, staged.size)
        known = bytes.fromhex(digest.encoded) if digest is not None else None  # key_digest: sha256 only
        await self.put_small(key, data, meta, known)

    async def put_small(
        self, key: str, data: bytes, meta: dict[str, str] | None = None, known: bytes | None = None
    ) -> None:
        async def put(sha256: bool) -> None:
            sent = checksum(data, sha256, known)
            answer = await self._call(
                "put",
                lambda: self._client.put_object(
                    Bucket=self.bucket,
                    Key=self._key(key),
                    Body=data,
                    ContentType=content_type(key),
                    Metadata=meta or {},
                    **sent,
                ),
                WRITE_TIMEOUT,
            )
            confirm(sent, answer)

        await self._checked(put)

    async def _send_parts(self, key: str, staged: StagedObject, sha256: bool, meta: dict[str, str]) -> None:
        """One multipart upload of the file: parts a few at once; a failed part cancels the others
        and aborts the upload."""
        where = {"Bucket": self.bucket, "Key": self._key(key)}
        extra = {"ChecksumAlgorithm": "SHA256"} if sha256 else {}
        created = await self._call(
            "upload",
            lambda: self._client.create_multipart_upload(
                **where, ContentType=content_type(key), Metadata=meta, **extra
            ),
            WRITE_TIMEOUT,
        )
        upload_id = created["UploadId"]
        chunk = part_size(staged.size)
        slots = asyncio.Semaphore(PARALLEL_PARTS)
        parts: dict[int, dict[str, Any]] = {}

        async def send(number: int) -> None:
            async with slots:
                offset = (number - 1) * chunk
                data = await asyncio.to_thread(read_range, staged.path, offset, min(chunk, staged.size - offset))
                # Hashing 16 MiB takes long enough to leave the event loop for it.
                sent = await asyncio.to_thread(checksum, data, sha256)
                answer = await self._call(
                    "upload",
                    lambda: self._client.upload_part(**where, UploadId=upload_id, PartNumber=number, Body=data, **sent),
                    WRITE_TIMEOUT,
                )
                confirm(sent, answer)
                parts[number] = {"PartNumber": number, "ETag": answer["ETag"]}
                if sha256:
                    parts[number]["ChecksumSHA256"] = answer["ChecksumSHA256"]

        try:
            try:
                async with asyncio.TaskGroup() as group:
                    for number in range(1, math.ceil(staged.size / chunk) + 1):
                        group.create_task(send(number))
            except BaseExceptionGroup as failed:
                raise failed.exceptions[0] from None
            done = {"Parts": [parts[n] for n in sorted(parts)]}
            await self._call(
                "upload",
                lambda: self._client.complete_multipart_upload(**where, UploadId=upload_id, MultipartUpload=done),
                WRITE_TIMEOUT,
            )
        except BaseException:
            # Best effort (the bucket's lifecycle rule is the backstop), even while being cancelled.
            try:
                await asyncio.shield(self._client.abort_multipart_upload(**where, UploadId=upload_id))
            except Exception as exc:  # noqa: BLE001 - logged; the upload failed already
                log.warning("S3 abort of the upload of %s failed: %s", where["Key"], exc)
            raise

    async def _checked(self, upload: Callable[[bool], Awaitable[None]]) -> None:
        """Run an upload that S3 checks by SHA-256 (`upload(True)`); once the store turns out to
        ignore that, every upload (this one again, too) goes with Content-MD5 (`upload(False)`)."""
        if self._sha256:
            try:
                await upload(True)
                return
            except ChecksumIgnored:
                if self._sha256:
                    log.info("S3 at %s does not verify ChecksumSHA256; uploads use Content-MD5", self.endpoint)
                self._sha256 = False
        await upload(False)
