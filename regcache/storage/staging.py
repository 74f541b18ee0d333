"""Hash-through staging files: a download lands here, hashed as it is written, and is committed
to a tier only after its digest checks out.

Readers share the file through positional reads on their own duplicate of the descriptor, so a
rename at commit or an unlink after a failure never pulls bytes from under them mid-read.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from pathlib import Path

STAGING_DIR = "staging"


class StagingFile:
    """An append-only file being filled from upstream, with its running sha256."""

    def __init__(self, root: Path) -> None:
        directory = root / STAGING_DIR
        directory.mkdir(parents=True, exist_ok=True)
        self.path = str(directory / uuid.uuid4().hex)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        self.size = 0

    def write(self, chunks: list[bytes]) -> None:
        """Write a batch of chunks with one system call; the caller hashes them (in parallel)."""
        total = sum(len(c) for c in chunks)
        written = os.writev(self.fd, chunks)
        if written < total:
            # A short write (rare: signals, nearly full disk): finish the rest piece by piece.
            rest = memoryview(b"".join(chunks))[written:]
            while rest:
                rest = rest[os.write(self.fd, rest) :]
        self.size += total

    def reserve(self, size: int) -> None:
        """Allocate the whole file up front; raises OSError (ENOSPC) when the disk cannot hold it.

        The file then reads as `size` bytes with zeros past what was written; nothing reads
        there (readers stop at `self.size`), and a download that ends short is discarded.
        """
        try:
            os.posix_fallocate(self.fd, 0, size)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                return  # a filesystem without fallocate: find out while writing instead
            raise

    def sync(self) -> None:
        os.fdatasync(self.fd)

    def dup(self) -> int:
        """A descriptor of the reader's own, valid after the staging file is renamed or removed."""
        return os.dup(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def discard(self) -> None:
        self.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def clear_staging(root: Path) -> int:
    """Remove leftovers of downloads a crash interrupted; returns how many there were."""
    directory = root / STAGING_DIR
    if not directory.exists():
        return 0
    count = sum(1 for _ in directory.iterdir())
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    return count
