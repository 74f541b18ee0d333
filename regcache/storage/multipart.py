"""The pieces of an S3 upload: how large its parts are, a part's bytes, and the checksum S3 is
asked to verify them against."""

from __future__ import annotations

import base64
import hashlib
import math
import os
from typing import Any

from regcache.storage.base import TierUnavailable

MIN_PART_SIZE = 16 * 1024 * 1024
MAX_PARTS = 10_000


class ChecksumIgnored(TierUnavailable):
    """The store neither checked nor echoed the ChecksumSHA256 it was sent: use Content-MD5."""


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
