"""The local-disk tier: files under the cache dir, made visible by rename.

A file's mtime is its last use: set when it is committed, refreshed by a hit (open, a small read,
an existence check) when it is older than LAST_USE_RESOLUTION, with one futimens on the
descriptor the hit opened anyway. atime is not used: relatime and noatime mounts do not keep it.
"""

from __future__ import annotations

import os
import stat
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from regcache.storage.base import CHUNK, LAST_USE_RESOLUTION, ObjectInfo, StagedObject
from regcache.storage.staging import STAGING_DIR


class FileSource:
    """A stored file opened for reading (a ByteSource that is FileBacked, so it can be sendfile'd).

    The descriptor keeps the bytes readable after the file is replaced or evicted; a file
    truncated from outside ends `chunks` with an OSError rather than a short body.
    """

    def __init__(self, fd: int, size: int, on_close: Callable[[], None] | None = None) -> None:
        self.fd = fd
        self.size = size
        # Run once when the source closes: the store unpins the object so eviction may take it.
        self._on_close = on_close

    def fileno(self) -> int:
        return self.fd

    async def readable(self, offset: int, end: int) -> int:
        return end  # a stored file is complete

    async def chunks(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        end = self.size if end is None else end
        position = start
        while position < end:
            chunk = os.pread(self.fd, min(CHUNK, end - position), position)
            if not chunk:
                raise OSError(f"the stored file shrank to {position} bytes while {end} were being read")
            position += len(chunk)
            yield chunk

    async def aclose(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            if self._on_close is not None:
                self._on_close()
                self._on_close = None


@dataclass(frozen=True)
class StoredFile:
    """A committed file seen as a staged one, to copy it to another tier (the replicator)."""

    path: str
    size: int


class DiskTier:
    name = "disk"

    def __init__(self, root: Path, record_use: bool = True) -> None:
        self.root = root
        # False for the operator's commands: their reads are not uses.
        self.record_use = record_use
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / STAGING_DIR).mkdir(exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / key

    def _stat(self, key: str) -> os.stat_result | None:
        """The stored file's stat; None when there is none (a path through a file is none too)."""
        try:
            return os.stat(self._path(key))
        except (FileNotFoundError, NotADirectoryError):
            return None

    async def stat(self, key: str) -> ObjectInfo | None:
        st = self._stat(key)
        return None if st is None else ObjectInfo(key, st.st_size, modified=st.st_mtime)

    async def open(self, key: str, on_close: Callable[[], None] | None = None) -> FileSource | None:
        """The stored file, or None; `on_close` runs once when the source is closed. A use."""
        try:
            fd = os.open(self._path(key), os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            return None
        st = os.fstat(fd)
        self._note_use(fd, st.st_mtime)
        return FileSource(fd, st.st_size, on_close)

    def stored(self, key: str) -> StoredFile | None:
        """The stored file of `key` as something another tier's `commit` can copy; None if absent."""
        st = self._stat(key)
        return None if st is None else StoredFile(str(self._path(key)), st.st_size)

    async def read_small(self, key: str) -> bytes | None:
        """The object's bytes, or None. A use."""
        try:
            fd = os.open(self._path(key), os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            return None
        with os.fdopen(fd, "rb") as file:
            self._note_use(fd, os.fstat(fd).st_mtime)
            return file.read()

    async def put_small(self, key: str, data: bytes) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = self.root / STAGING_DIR
        staging.mkdir(parents=True, exist_ok=True)
        temp = staging / f"small-{uuid.uuid4().hex}"
        temp.write_bytes(data)
        os.replace(temp, target)

    async def commit(self, key: str, staged: StagedObject) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged.path, target)

    async def delete(self, key: str) -> None:
        self.unlink(key)

    def unlink(self, key: str) -> None:
        """Remove a stored object now (eviction cannot wait); readers that have it open keep
        their bytes."""
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass

    def exists(self, key: str) -> bool:
        """Whether the object is stored (a hot manifest's check): a use."""
        st = self._stat(key)
        if st is None or not stat.S_ISREG(st.st_mode):
            return False
        self._note_use(self._path(key), st.st_mtime)
        return True

    async def entries(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        base = self._path(prefix)
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                path = os.path.join(dirpath, name)
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue  # removed since the directory was read
                yield ObjectInfo(os.path.relpath(path, self.root), st.st_size, modified=st.st_mtime)

    def writable(self) -> bool:
        """Whether a file can be created in the cache dir right now (for /readyz)."""
        probe = self.root / STAGING_DIR / f"ready-{uuid.uuid4().hex}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
            return True
        except OSError:
            return False

    def _note_use(self, file: int | str | Path, modified: float) -> None:
        """Refresh a stored file's mtime (its last use) when it is older than LAST_USE_RESOLUTION."""
        if not self.record_use or time.time() - modified < LAST_USE_RESOLUTION:
            return
        try:
            os.utime(file)
        except OSError:
            pass  # a file another user owns, a read-only mount: the use goes unrecorded
