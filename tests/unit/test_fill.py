"""The fill and its spool in-process, against origins that misbehave on cue: what a client of a
download in flight can receive, and what the cache keeps."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from regcache.cache.fill import Fill, FillMap
from regcache.cache.spool import Spool
from regcache.cache.verifying import VerifyingSource
from regcache.errors import DigestMismatch, SizeMismatch, UpstreamError
from regcache.oci.digest import Digest
from regcache.upstream.client import UpstreamResponse

PIECE = 64 * 1024


def digest_of(data: bytes) -> Digest:
    return Digest("sha256", hashlib.sha256(data).hexdigest())


class FakeSource:
    """The object from `base` on, in pieces; it may break off, stop short or stall on cue."""

    def __init__(self, data: bytes, base: int = 0, size: int | None = None, **cues: object) -> None:
        self.size = len(data) if size is None else size
        self._data = data
        self._base = base
        self._break_at = cues.get("break_at")
        self._stop_at = cues.get("stop_at")
        self._stall_at = cues.get("stall_at")
        self._release: asyncio.Event | None = cues.get("release")  # type: ignore[assignment]
        self.closed = False

    async def chunks(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        position = start
        while True:
            for cue, action in ((self._stall_at, "stall"), (self._break_at, "break"), (self._stop_at, "stop")):
                if cue is not None and position >= cue:
                    if action == "stall" and self._release is not None and not self._release.is_set():
                        await self._release.wait()
                    elif action == "break":
                        raise UpstreamError("fake", f"connection reset after {position} bytes")
                    elif action == "stop":
                        return
            if position >= len(self._data):
                return
            piece = self._data[position : min(position + PIECE, len(self._data))]
            for cue in (self._stall_at, self._break_at, self._stop_at):
                if isinstance(cue, int) and position < cue < position + len(piece):
                    piece = piece[: cue - position]
            position += len(piece)
            await asyncio.sleep(0)
            yield piece

    async def aclose(self) -> None:
        self.closed = True


class FakeOrigin:
    """Answers each open with the next source of its plan; records where it was resumed."""

    name = "upstream"

    def __init__(self, *plan: FakeSource | UpstreamResponse) -> None:
        self._plan = list(plan)
        self.resumed_at: list[int] = []
        self.failures: list[Exception] = []

    async def open(self) -> FakeSource | UpstreamResponse:
        return self._plan.pop(0)

    async def resume(self, offset: int, size: int) -> FakeSource:
        self.resumed_at.append(offset)
        source = self._plan.pop(0)
        assert isinstance(source, FakeSource)
        return source

    def failed(self, error: Exception) -> None:
        self.failures.append(error)


class Committed:
    def __init__(self, target: Path) -> None:
        self.target = target
        self.calls = 0

    async def __call__(self, spool: Spool, origin: str) -> bool:
        self.calls += 1
        os.replace(spool.staging.path, self.target)
        return True


async def read_all(fill: Fill, delay: float = 0.0, start: int = 0, end: int | None = None) -> bytes:
    reader = fill.reader(None)
    got = bytearray()
    try:
        await fill.head
        async for chunk in reader.chunks(start, end):
            got += chunk
            if delay:
                await asyncio.sleep(delay)
    finally:
        await reader.aclose()
    return bytes(got)


def start_fill(
    tmp_path: Path, data: bytes, origin: FakeOrigin, expected: Digest | None = None
) -> tuple[Fill, Committed]:
    commit = Committed(tmp_path / "stored")
    spool = Spool(tmp_path, "fake", expected or digest_of(data))
    fill = Fill("blobs/x", spool, origin, commit)
    FillMap().start(fill)
    return fill, commit


def staging_files(tmp_path: Path) -> list[str]:
    return os.listdir(tmp_path / "staging")


def test_readers_at_different_speeds_get_the_whole_object_and_it_is_committed_once(tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 17)

    async def main() -> None:
        fill, commit = start_fill(tmp_path, data, FakeOrigin(FakeSource(data)))
        fast, slow = await asyncio.gather(read_all(fill), read_all(fill, delay=0.001))
        assert fast == data and slow == data
        await wait_for(lambda: commit.calls == 1)
        assert (tmp_path / "stored").read_bytes() == data
        await wait_for(lambda: staging_files(tmp_path) == [])

    asyncio.run(main())


def test_a_broken_download_resumes_where_the_spool_stopped(tmp_path):
    data = os.urandom(1024 * 1024)
    origin = FakeOrigin(
        FakeSource(data, break_at=300_001), FakeSource(data, base=300_001, break_at=700_000), FakeSource(data)
    )

    async def main() -> None:
        fill, commit = start_fill(tmp_path, data, origin)
        assert await read_all(fill) == data
        await wait_for(lambda: commit.calls == 1)
        assert origin.resumed_at == [300_001, 700_000]
        assert (tmp_path / "stored").read_bytes() == data

    asyncio.run(main())


def test_a_download_that_keeps_breaking_fails_after_two_resumes_and_stores_nothing(tmp_path):
    data = os.urandom(512 * 1024)
    origin = FakeOrigin(*(FakeSource(data, break_at=100_000 * (i + 1)) for i in range(3)))

    async def main() -> None:
        fill, commit = start_fill(tmp_path, data, origin)
        with pytest.raises(UpstreamError, match="connection reset"):
            await read_all(fill)
        await wait_for(lambda: staging_files(tmp_path) == [])
        assert commit.calls == 0 and len(origin.resumed_at) == 2

    asyncio.run(main())


def test_wrong_bytes_are_never_complete_for_a_reader_nor_stored(tmp_path):
    data = os.urandom(700_000)
    wrong = data[:-1] + bytes([data[-1] ^ 1])

    async def main() -> None:
        fill, commit = start_fill(tmp_path, data, FakeOrigin(FakeSource(wrong)))
        reader = fill.reader(None)
        got = bytearray()
        with pytest.raises(DigestMismatch):
            async for chunk in reader.chunks():
                got += chunk
        await reader.aclose()
        assert len(got) < len(data), "a reader held every byte of a body that does not verify"
        await wait_for(lambda: staging_files(tmp_path) == [])
        assert commit.calls == 0

    asyncio.run(main())


def test_a_body_shorter_than_announced_fails_with_a_size_mismatch(tmp_path):
    data = os.urandom(200_000)

    async def main() -> None:
        fill, commit = start_fill(tmp_path, data, FakeOrigin(FakeSource(data, stop_at=150_000)))
        with pytest.raises(SizeMismatch):
            await read_all(fill)
        await wait_for(lambda: staging_files(tmp_path) == [])
        assert commit.calls == 0

    asyncio.run(main())


def test_the_last_byte_of_the_object_and_of_a_range_waits_for_the_verdict(tmp_path):
    data = os.urandom(400_000)
    release = asyncio.Event()

    async def collect(fill: Fill, got: bytearray, start: int = 0, end: int | None = None) -> None:
        reader = fill.reader(None)
        async for chunk in reader.chunks(start, end):
            got += chunk
        await reader.aclose()

    async def main() -> None:
        origin = FakeOrigin(FakeSource(data, stall_at=len(data), release=release))
        fill, commit = start_fill(tmp_path, data, origin)
        whole, ranged = bytearray(), bytearray()
        reading = asyncio.gather(collect(fill, whole), collect(fill, ranged, 1000, 2000))
        await wait_for(lambda: fill.spool.written == len(data))
        await wait_for(lambda: len(whole) == len(data) - 1 and len(ranged) == 999)
        await asyncio.sleep(0.05)
        assert (len(whole), len(ranged)) == (len(data) - 1, 999), "a reader got a last byte before the verdict"
        release.set()
        await reading
        assert whole == data and ranged == data[1000:2000]

    asyncio.run(main())


def test_a_stalled_source_holds_readers_without_spinning_and_they_go_on_when_it_does(tmp_path):
    data = os.urandom(1024 * 1024)
    release = asyncio.Event()

    async def main() -> None:
        origin = FakeOrigin(FakeSource(data, stall_at=500_000, release=release))
        fill, _ = start_fill(tmp_path, data, origin)
        reading = asyncio.ensure_future(read_all(fill))
        await wait_for(lambda: fill.spool.written == 500_000)
        loop = asyncio.get_running_loop()
        before = loop.time()
        await asyncio.sleep(0.2)
        assert loop.time() - before < 1.0 and not reading.done()
        release.set()
        assert await reading == data

    asyncio.run(main())


def test_a_reader_that_leaves_early_does_not_stop_the_download(tmp_path):
    data = os.urandom(2 * 1024 * 1024)

    async def main() -> None:
        fill, commit = start_fill(tmp_path, data, FakeOrigin(FakeSource(data)))
        leaver = fill.reader(None)
        async for _chunk in leaver.chunks():
            break
        await leaver.aclose()
        assert fill.readers == 0
        await wait_for(lambda: commit.calls == 1)
        assert (tmp_path / "stored").read_bytes() == data

    asyncio.run(main())


def test_a_registry_refusal_is_passed_on_and_nothing_is_staged(tmp_path):
    from tornado.httputil import HTTPHeaders

    refusal = UpstreamResponse(404, HTTPHeaders({"Content-Type": "application/json"}), b'{"errors":[]}')

    async def main() -> None:
        fill, commit = start_fill(tmp_path, b"x", FakeOrigin(refusal))
        head = await fill.head
        assert head.passed is refusal
        await wait_for(lambda: staging_files(tmp_path) == [])
        assert commit.calls == 0

    asyncio.run(main())


def test_a_verifying_source_keeps_the_end_of_a_wrong_body_back(tmp_path):
    data = os.urandom(300_000)
    wrong = bytes([data[0] ^ 1]) + data[1:]

    async def main() -> None:
        got = bytearray()
        source = VerifyingSource(FakeSource(wrong), digest_of(data), "fake")
        with pytest.raises(DigestMismatch):
            async for chunk in source.chunks():
                got += chunk
        assert len(got) < len(data)
        right = VerifyingSource(FakeSource(data), digest_of(data), "fake")
        assert b"".join([c async for c in right.chunks()]) == data

    asyncio.run(main())


async def wait_for(condition, timeout: float = 5.0) -> None:  # noqa: ANN001 - a predicate
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)
