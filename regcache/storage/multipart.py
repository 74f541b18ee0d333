"""Uploading a file to S3 with S3 checking the bytes: the checksum headers, and one multipart upload
(create, parts, complete, or abort on any failure so no parts are left behind).

Parts are sized from the object (as s3fs's `_put_file` does): 16 MiB, a few in memory at once,
unless S3's 10,000-part limit needs larger ones.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import math
import os
from collections.abc import Awaitable, Callable
from typing import Any

from regcache.storage.base import StagedObject, TierUnavailable

log = logging.getLogger(__name__)

MIN_PART_SIZE = 16 * 1024 * 1024
MAX_PARTS = 10_000
PARALLEL_PARTS = 3
# One PUT of at most a part's size, or a completion: a store that accepts the connection and
# then never answers must not hold an upload lane forever.
WRITE_TIMEOUT = 120.0


class ChecksumIgnored(TierUnavailable):
    """The store neither checked nor echoed the ChecksumSHA256 it was sent: use Content-MD5."""


# The tier's one way into S3, `S3Tier._call(op, call, timeout)`: translates errors, keeps the breaker.
S3Call = Callable[[str, Callable[[], Awaitable[Any]], float], Awaitable[Any]]


def part_size(size: int) -> int:
    mib = 1024 * 1024
    return max(MIN_PART_SIZE, math.ceil(size / (MAX_PARTS - 1) / mib) * mib)


def checksum(data: bytes, sha256: bool, known: bytes | None = None) -> dict[str, str]:
    """The header S3 verifies `data` against: its SHA-256 (`known`, when the caller has it: a
    blob's digest), or where the store ignores that, its MD5 (which every S3 checks)."""
    if sha256:
        return {"ChecksumSHA256": _b64(known or hashlib.sha256(data).digest())}
    return {"ContentMD5": _b64(hashlib.md5(data, usedforsecurity=False).digest())}


def confirm(sent: dict[str, str], answer: dict[str, Any]) -> None:
    """Raise ChecksumIgnored when a SHA-256 was sent and the store's answer does not echo it."""
    if "ChecksumSHA256" in sent and not answer.get("ChecksumSHA256"):
        raise ChecksumIgnored("S3 upload: the store did not verify the SHA-256 checksum")


def read_range(path: str, offset: int, length: int) -> bytes:
    """`length` bytes of the file at `offset`; FileNotFoundError if it went or is shorter now."""
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.pread(fd, length, offset)
    finally:
        os.close(fd)
    if len(data) != length:
        raise FileNotFoundError(f"{path} shrank while being uploaded")
    return data


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


async def send_file(
    call: S3Call,
    client: Any,
    where: dict[str, str],
    sha256: bool,
    staged: StagedObject,
    content_type: str,
    meta: dict[str, str],
) -> None:
    """One multipart upload of the file to `where` (the bucket and the full S3 key), every call
    through `call`: parts a few at once; a failed part cancels the others and aborts the upload."""
    extra = {"ChecksumAlgorithm": "SHA256"} if sha256 else {}
    created = await call(
        "upload",
        lambda: client.create_multipart_upload(**where, ContentType=content_type, Metadata=meta, **extra),
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
            answer = await call(
                "upload",
                lambda: client.upload_part(**where, UploadId=upload_id, PartNumber=number, Body=data, **sent),
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
        await call(
            "upload",
            lambda: client.complete_multipart_upload(**where, UploadId=upload_id, MultipartUpload=done),
            WRITE_TIMEOUT,
        )
    except BaseException:
        # Best effort (the bucket's lifecycle rule is the backstop), even while being cancelled.
        try:
            await asyncio.shield(client.abort_multipart_upload(**where, UploadId=upload_id))
        except Exception as exc:  # noqa: BLE001 - logged; the upload failed already
            log.warning("S3 abort of the upload of %s failed: %s", where["Key"], exc)
        raise
