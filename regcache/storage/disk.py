"""The local-disk tier: files under the cache dir, made visible by rename."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from regcache.storage.base import ObjectInfo, StagedObject
from regcache.storage.staging import STAGING_DIR


class FileReader:
    """A stored file opened for positional reads; `fileno` allows sendfile."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        # Called once when the reader closes (the LRU index unpins the object).
        self.on_close: Callable[[], None] | None = None

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, length, offset)

    def fileno(self) -> int:
        return self.fd

    async def readable(self, offset: int, end: int) -> int:
        return end

    async def chunks(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        end = self.size if end is None else end
        position = start
        while position < end:
            chunk = os.pread(self.fd, min(1 << 20, end - position), position)
            if not chunk:
                raise OSError(f"the stored file shrank under its reader at byte {position}")
            position += len(chunk)
            yield chunk

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            if self.on_close is not None:
                self.on_close()
                self.on_close = None


class DiskTier:
    name = "disk"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / STAGING_DIR).mkdir(exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / key

    async def stat(self, key: str) -> ObjectInfo | None:
        try:
            st = os.stat(self._path(key))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return ObjectInfo(key, st.st_size)

    async def open(self, key: str) -> FileReader | None:
        try:
            fd = os.open(self._path(key), os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return FileReader(fd, os.fstat(fd).st_size)

    async def read_small(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

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
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass

    def exists(self, key: str) -> bool:
        return os.path.isfile(self._path(key))

    def unlink(self, key: str) -> None:
        """Remove a stored object now (eviction); readers that have it open keep their bytes."""
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass

    async def keys(self, prefix: str) -> AsyncIterator[str]:
        base = self._path(prefix)
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                yield os.path.relpath(os.path.join(dirpath, name), self.root)

    def writable(self) -> bool:
        """Whether a file can be created in the cache dir right now (for /readyz)."""
        probe = self.root / STAGING_DIR / f"ready-{uuid.uuid4().hex}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
            return True
        except OSError:
            return False
