"""A tier in a dict: the tier contract's third implementation, and the shared tier of in-process
tests (it can stand in for S3: it presigns and closes)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

from regcache.storage.base import CHUNK, ObjectInfo, StagedObject


class BytesSource:
    """Bytes in memory as a ByteSource; a range past their end raises, as a shrunk file does."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.size = len(data)

    async def chunks(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        end = self.size if end is None else end
        if end > self.size:
            raise OSError(f"{end} bytes asked of an object of {self.size}")
        for offset in range(start, end, CHUNK):
            yield self._data[offset : min(offset + CHUNK, end)]

    async def aclose(self) -> None:
        pass


class InMemoryTier:
    name = "memory"

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.written: dict[str, float] = {}

    async def stat(self, key: str) -> ObjectInfo | None:
        data = self.objects.get(key)
        return None if data is None else ObjectInfo(key, len(data), modified=self.written.get(key))

    async def open(self, key: str) -> BytesSource | None:
        data = self.objects.get(key)
        return None if data is None else BytesSource(data)

    async def read_small(self, key: str) -> bytes | None:
        return self.objects.get(key)

    async def put_small(self, key: str, data: bytes) -> None:
        self.objects[key] = bytes(data)
        self.written[key] = time.time()

    async def commit(self, key: str, staged: StagedObject) -> None:
        data = Path(staged.path).read_bytes()
        if len(data) != staged.size:
            raise FileNotFoundError(f"{staged.path} holds {len(data)} bytes, not {staged.size}")
        self.objects[key] = data
        self.written[key] = time.time()

    async def delete(self, key: str) -> None:
        self.objects.pop(key, None)
        self.written.pop(key, None)

    async def entries(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        for key in list(self.objects):
            if key.startswith(prefix):
                yield ObjectInfo(key, len(self.objects[key]), modified=self.written.get(key))

    async def presign(self, key: str, expires: int) -> str:
        return f"memory:///{key}?expires={expires}"

    async def close(self) -> None:
        pass
