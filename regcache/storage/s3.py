"""The shared S3 tier: the same key layout as the disk, under an optional prefix, in one bucket
that every replica reads and writes.

Every S3 call goes through `_call`, which translates botocore's and aiohttp's errors into
`TierUnavailable` (an OSError, like a disk failure) and keeps a circuit breaker: after a failure
the tier reports itself down for a backoff period, so lookups skip it at once instead of making
every pull wait for a timeout while S3 is unreachable. One WARNING per burst of failures, one
INFO when it answers again; every failure is counted in `regcache_tier_errors_total`.

Uploads ask S3 to verify the bytes: `ChecksumSHA256` (for a single PUT of a blob that is the
blob's own digest, so S3 refuses anything that is not the blob); a store that neither checks nor
echoes the checksum is switched to `Content-MD5`, which every S3 implementation checks.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, TypeVar

from regcache import metrics
from regcache.errors import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")

# Objects up to this size go up in one PUT; larger ones in parts of at least this size.
MIN_PART_SIZE = 16 * 1024 * 1024
MAX_PARTS = 10_000
PARALLEL_PARTS = 3
# A lookup that takes longer than this is treated as a failure: the pull goes upstream instead.
LOOKUP_TIMEOUT = 5.0
# One PUT of at most a part's size, or a completion: a store that accepts the connection and
# then never answers must not hold an upload lane forever.
WRITE_TIMEOUT = 120.0
BACKOFF_FIRST = 2.0
BACKOFF_MAX = 60.0
READ_CHUNK = 1024 * 1024
_MISSING = frozenset(("404", "NoSuchKey", "NotFound"))


class TierUnavailable(OSError):
    """S3 did not answer, or answered with an error that is not "no such key"."""


class ContentRejected(TierUnavailable):
    """S3 refused an upload because its bytes do not match the checksum sent with them."""


_REJECTED = frozenset(("BadDigest", "InvalidDigest", "XAmzContentChecksumMismatch", "XAmzContentSHA256Mismatch"))


@dataclass(frozen=True)
class S3Object:
    key: str
    size: int
    content_type: str
    digest: str | None


def part_size(size: int) -> int:
    """16 MiB parts (a few in memory at once) unless S3's 10,000-part limit needs larger ones."""
    mib = 1024 * 1024
    return max(MIN_PART_SIZE, math.ceil(size / (MAX_PARTS - 1) / mib) * mib)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


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


class S3Tier:
    name = "s3"

    def __init__(self, bucket: str, prefix: str = "") -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint = "(AWS default)"
        self._client: Any = None
        self._stack = AsyncExitStack()
        self._down_until = 0.0
        self._backoff = BACKOFF_FIRST
        self._failing = False
        self._checksum = "sha256"

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

    async def close(self) -> None:
        await self._stack.aclose()

    async def check(self, timeout: float = 10.0) -> None:
        """Fail start-up in seconds, in one line naming the bucket, the endpoint and the error."""
        try:
            await asyncio.wait_for(
                self._client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1), timeout
            )
        except TimeoutError:
            raise ConfigError(
                f"S3 bucket {self.bucket!r} at {self.endpoint}: no answer within {timeout:.0f}s"
            ) from None
        except Exception as exc:  # noqa: BLE001 - every failure is reported the same way
            raise ConfigError(f"S3 bucket {self.bucket!r} at {self.endpoint}: {_describe(exc)}") from None

    # --- the breaker --------------------------------------------------------------------------
    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    async def _call(
        self, op: str, call: Callable[[], Awaitable[T]], timeout: float | None = None, missing_ok: bool = False
    ) -> T:
        """Run one S3 call; FileNotFoundError for "no such key" where `missing_ok` (reads),
        TierUnavailable for every other failure (a write answered 404 is a failure too)."""
        if not self.available:
            raise TierUnavailable(f"S3 {op}: skipped, the bucket failed moments ago")
        try:
            if timeout is None:
                result = await call()
            else:
                result = await asyncio.wait_for(call(), timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - translated here, where foreign errors enter
            if missing_ok and _error_code(exc) in _MISSING:
                self._succeeded()
                raise FileNotFoundError(op) from None
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
        self._down_until = time.monotonic() + self._backoff
        if not self._failing:
            log.warning(
                "S3 bucket %s at %s: %s failed (%s); serving from local disk and upstream, retrying in %.0fs",
                self.bucket,
                self.endpoint,
                op,
                _describe(exc) or "timed out",
                self._backoff,
            )
        self._failing = True
        self._backoff = min(self._backoff * 2, BACKOFF_MAX)

    def _succeeded(self) -> None:
        if self._failing:
            log.info("S3 bucket %s answers again", self.bucket)
        self._failing = False
        self._backoff = BACKOFF_FIRST

    def _key(self, key: str) -> str:
        return self.prefix + key

    # --- reads --------------------------------------------------------------------------------
    async def stat(self, key: str) -> S3Object | None:
        try:
            head = await self._call(
                "head",
                lambda: self._client.head_object(Bucket=self.bucket, Key=self._key(key)),
                LOOKUP_TIMEOUT,
                missing_ok=True,
            )
        except FileNotFoundError:
            return None
        meta = head.get("Metadata") or {}
        return S3Object(
            key=key,
            size=int(head["ContentLength"]),
            content_type=str(head.get("ContentType") or "application/octet-stream"),
            digest=meta.get("digest"),
        )

    async def read_small(self, key: str) -> bytes | None:
        async def get() -> bytes:
            answer = await self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            async with answer["Body"] as body:
                return await body.read()

        try:
            return await self._call("get", get, LOOKUP_TIMEOUT, missing_ok=True)
        except FileNotFoundError:
            return None

    async def open_stream(self, key: str) -> tuple[S3Object, AsyncIterator[bytes]] | None:
        """The object's size and type, and its bytes in chunks; None if it is not there."""
        try:
            answer = await self._call(
                "get",
                lambda: self._client.get_object(Bucket=self.bucket, Key=self._key(key)),
                LOOKUP_TIMEOUT,
                missing_ok=True,
            )
        except FileNotFoundError:
            return None
        info = S3Object(
            key=key,
            size=int(answer["ContentLength"]),
            content_type=str(answer.get("ContentType") or "application/octet-stream"),
            digest=(answer.get("Metadata") or {}).get("digest"),
        )
        return info, self._chunks(answer["Body"])

    async def _chunks(self, body: Any) -> AsyncIterator[bytes]:
        async with body:
            while True:
                try:
                    chunk = await body.read(READ_CHUNK)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a dropped S3 stream, translated
                    self._failed("get", exc)
                    raise TierUnavailable(f"S3 get: {_describe(exc)}") from None
                if not chunk:
                    return
                yield chunk

    async def presign(self, key: str, expires: int) -> str:
        return await self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=expires
        )

    async def keys(self, prefix: str) -> AsyncIterator[str]:
        paginator = self._client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
            for item in page.get("Contents", []):
                yield item["Key"][len(self.prefix) :]

    # --- writes -------------------------------------------------------------------------------
    async def delete(self, key: str) -> None:
        try:
            await self._call(
                "delete", lambda: self._client.delete_object(Bucket=self.bucket, Key=self._key(key)), missing_ok=True
            )
        except FileNotFoundError:
            pass

    async def put_small(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        await self._put(key, data, content_type, {}, hashlib.sha256(data).digest())

    async def upload_file(self, key: str, path: str, size: int, content_type: str, digest: str | None) -> None:
        """Upload a committed local file under `key`: visible only once complete."""
        meta = {"digest": digest} if digest else {}
        if size <= MIN_PART_SIZE:
            data = await asyncio.to_thread(_read_range, path, 0, size)
            if len(data) != size:
                raise FileNotFoundError(path)
            sha = bytes.fromhex(digest.split(":", 1)[1]) if digest and digest.startswith("sha256:") else None
            await self._put(key, data, content_type, meta, sha or hashlib.sha256(data).digest())
            return
        await self._multipart(key, path, size, content_type, meta)

    async def _put(self, key: str, data: bytes, content_type: str, meta: dict[str, str], sha: bytes) -> None:
        while True:
            checksum = self._checksum
            extra = (
                {"ChecksumSHA256": _b64(sha)}
                if checksum == "sha256"
                else {"ContentMD5": _b64(hashlib.md5(data, usedforsecurity=False).digest())}
            )
            answer = await self._call(
                "put",
                lambda extra=extra: self._client.put_object(
                    Bucket=self.bucket, Key=self._key(key), Body=data, ContentType=content_type, Metadata=meta, **extra
                ),
                WRITE_TIMEOUT,
            )
            if checksum == "sha256" and not answer.get("ChecksumSHA256"):
                self._no_sha256_support()
                continue  # the store did not check it: upload again with a check it does
            return

    def _no_sha256_support(self) -> None:
        if self._checksum == "sha256":
            log.info("S3 at %s does not verify ChecksumSHA256; uploads use Content-MD5", self.endpoint)
        self._checksum = "md5"

    async def _multipart(self, key: str, path: str, size: int, content_type: str, meta: dict[str, str]) -> None:
        chunk = part_size(size)
        count = math.ceil(size / chunk)
        use_sha = self._checksum == "sha256"
        create = await self._call(
            "upload",
            lambda: self._client.create_multipart_upload(
                Bucket=self.bucket,
                Key=self._key(key),
                ContentType=content_type,
                Metadata=meta,
                **({"ChecksumAlgorithm": "SHA256"} if use_sha else {}),
            ),
            WRITE_TIMEOUT,
        )
        upload_id = create["UploadId"]
        parts: list[dict[str, Any] | None] = [None] * count
        slots = asyncio.Semaphore(PARALLEL_PARTS)

        async def send(number: int) -> None:
            async with slots:
                offset = (number - 1) * chunk
                length = min(chunk, size - offset)
                data = await asyncio.to_thread(_read_range, path, offset, length)
                if len(data) != length:
                    raise FileNotFoundError(path)
                if use_sha:
                    check = {"ChecksumSHA256": _b64(await asyncio.to_thread(lambda: hashlib.sha256(data).digest()))}
                else:
                    check = {"ContentMD5": _b64(hashlib.md5(data, usedforsecurity=False).digest())}
                answer = await self._call(
                    "upload",
                    lambda: self._client.upload_part(
                        Bucket=self.bucket,
                        Key=self._key(key),
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=data,
                        **check,
                    ),
                    WRITE_TIMEOUT,
                )
                part: dict[str, Any] = {"PartNumber": number, "ETag": answer["ETag"]}
                if use_sha:
                    if not answer.get("ChecksumSHA256"):
                        self._no_sha256_support()
                        raise TierUnavailable("S3 upload: the store did not verify the part's checksum")
                    part["ChecksumSHA256"] = answer["ChecksumSHA256"]
                parts[number - 1] = part

        try:
            try:
                # A failed part cancels the others at once.
                async with asyncio.TaskGroup() as group:
                    for number in range(1, count + 1):
                        group.create_task(send(number))
            except BaseExceptionGroup as failed:
                raise failed.exceptions[0] from None
            await self._call(
                "upload",
                lambda: self._client.complete_multipart_upload(
                    Bucket=self.bucket, Key=self._key(key), UploadId=upload_id, MultipartUpload={"Parts": parts}
                ),
                WRITE_TIMEOUT,
            )
        except BaseException:
            # Never leave parts behind (they cost storage and are invisible to listings).
            try:
                await asyncio.shield(
                    self._client.abort_multipart_upload(Bucket=self.bucket, Key=self._key(key), UploadId=upload_id)
                )
            except Exception as exc:  # noqa: BLE001 - best effort; the bucket's lifecycle rule is the backstop
                log.warning("S3 abort of the upload of %s failed: %s", key, _describe(exc))
            raise


def _read_range(path: str, offset: int, length: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)
