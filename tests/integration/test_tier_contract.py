"""One contract for every tier: what the store layer relies on, run against the disk, a real S3
server (SeaweedFS) and the in-memory tier alike."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from regcache.oci.digest import Digest
from regcache.storage.base import CHUNK, ContentRejected, TierUnavailable, blob_key
from regcache.storage.disk import DiskTier
from regcache.storage.multipart import MIN_PART_SIZE
from regcache.storage.s3 import S3Tier
from tests.fakes import CuttingForwarder
from tests.memory_tier import InMemoryTier
from tests.peers.seaweed import SeaweedS3


@pytest.fixture(scope="module")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    with SeaweedS3(tmp_path_factory.mktemp("weed")) as s3:
        yield s3


@dataclass(frozen=True)
class Staged:
    path: str
    size: int


def stage(tmp_path: Path, data: bytes) -> Staged:
    """A verified download as the fill leaves it: a whole file outside any key."""
    path = tmp_path / f"staged-{uuid.uuid4().hex}"
    path.write_bytes(data)
    return Staged(str(path), len(data))


def key_of(data: bytes) -> str:
    """A blob key that names `data` (S3 checks committed bytes against it)."""
    return blob_key(Digest.of(data))


async def read(source, start: int = 0, end: int | None = None) -> bytes:
    return b"".join([chunk async for chunk in source.chunks(start, end)])


async def _with_tier(kind: str, tmp_path, weed: SeaweedS3 | None, body) -> None:
    if kind == "disk":
        await body(DiskTier(tmp_path / "cache"))
    elif kind == "memory":
        await body(InMemoryTier())
    else:
        assert weed is not None
        await _with_s3(weed, body)


async def _with_s3(weed: SeaweedS3, body, bucket: str | None = None, endpoint: str | None = None) -> None:
    """A tier on a fresh bucket (or `bucket`), reached directly (or through `endpoint`)."""
    bucket = bucket or weed.bucket(f"contract-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    env = {
        "AWS_ACCESS_KEY_ID": weed.access_key,
        "AWS_SECRET_ACCESS_KEY": weed.secret_key,
        "AWS_REGION": weed.region,
        "AWS_ENDPOINT_URL_S3": endpoint or weed.endpoint,
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    tier = S3Tier(bucket, prefix="contract")
    try:
        await tier.start()
        await body(tier)
    finally:
        await tier.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(params=["disk", "s3", "memory"])
def run_on_tier(request, tmp_path):
    weed = request.getfixturevalue("weed") if request.param == "s3" else None

    def run(body) -> None:
        asyncio.run(_with_tier(request.param, tmp_path, weed, body))

    return run


def test_what_was_put_is_read_back_whole_and_stat_gives_its_size(run_on_tier):
    async def body(tier):
        assert await tier.stat("tags/r/x/t.json") is None
        assert await tier.read_small("tags/r/x/t.json") is None
        await tier.put_small("tags/r/x/t.json", b'{"digest": "sha256:00"}')
        assert await tier.read_small("tags/r/x/t.json") == b'{"digest": "sha256:00"}'
        assert (await tier.stat("tags/r/x/t.json")).size == 23

    run_on_tier(body)


def test_a_put_replaces_the_object_atomically(run_on_tier):
    async def body(tier):
        await tier.put_small("manifests/m.json", b"old")
        await tier.put_small("manifests/m.json", b"newer")
        assert await tier.read_small("manifests/m.json") == b"newer"

    run_on_tier(body)


def test_delete_removes_and_deleting_a_missing_key_is_fine(run_on_tier):
    async def body(tier):
        await tier.put_small("blobs/sha256/aa/gone", b"x")
        await tier.delete("blobs/sha256/aa/gone")
        await tier.delete("blobs/sha256/aa/gone")
        assert await tier.read_small("blobs/sha256/aa/gone") is None
        assert await tier.open("blobs/sha256/aa/gone") is None

    run_on_tier(body)


def test_keys_lists_what_is_under_a_prefix_put_or_committed(run_on_tier, tmp_path):
    async def body(tier):
        for key in ("tags/r/a/1.json", "tags/r/a/2.json", "tags/r/b/1.json"):
            await tier.put_small(key, b"{}")
        await tier.commit("tags/r/a/3.json", stage(tmp_path, b"{}"))
        assert sorted([e.key async for e in tier.entries("tags/r/a/")]) == [
            "tags/r/a/1.json",
            "tags/r/a/2.json",
            "tags/r/a/3.json",
        ]
        await tier.delete("tags/r/a/2.json")
        assert sorted([e.key async for e in tier.entries("tags/r/a/")]) == ["tags/r/a/1.json", "tags/r/a/3.json"]

    run_on_tier(body)


def test_entries_list_sizes_and_last_use_of_what_is_under_a_prefix(run_on_tier, tmp_path):
    async def body(tier):
        before = time.time() - 5
        await tier.put_small("tags/r/a/1.json", b"{}")
        await tier.commit(key_of(b"blob bytes"), stage(tmp_path, b"blob bytes"))
        tags = [e async for e in tier.entries("tags/")]
        assert [(e.key, e.size) for e in tags] == [("tags/r/a/1.json", 2)]
        blobs = [e async for e in tier.entries("blobs/")]
        assert [(e.key, e.size) for e in blobs] == [(key_of(b"blob bytes"), 10)]
        # Clocks of an S3 server and this host may differ by a little; not by minutes.
        assert all(abs(e.modified - before) < 120 for e in tags + blobs)
        assert (await tier.stat("tags/r/a/1.json")).modified == pytest.approx(tags[0].modified, abs=1)

    run_on_tier(body)


def test_open_of_a_missing_key_is_none(run_on_tier):
    async def body(tier):
        assert await tier.open("blobs/sha256/00/" + "00" * 32) is None

    run_on_tier(body)


def test_an_opened_object_yields_the_whole_of_it_and_any_range_in_chunks(run_on_tier, tmp_path):
    data = os.urandom(2 * CHUNK + 12345)  # three chunks
    size = len(data)

    async def body(tier):
        await tier.commit(key_of(data), stage(tmp_path, data))
        source = await tier.open(key_of(data))
        assert source is not None and source.size == size
        try:
            chunks = [chunk async for chunk in source.chunks()]
            assert b"".join(chunks) == data and max(len(c) for c in chunks) <= CHUNK
            assert await read(source, 5) == data[5:]  # a start only
            assert await read(source, 1000, CHUNK + 7) == data[1000 : CHUNK + 7]  # across a chunk
            assert await read(source, size - 1, size) == data[-1:]  # the last byte
            assert await read(source, 10, 10) == b""  # an empty range
            assert await read(source) == data  # a stored object reads again
        finally:
            await source.aclose()
            await source.aclose()

    run_on_tier(body)


def test_an_empty_object_opens_with_no_bytes(run_on_tier, tmp_path):
    async def body(tier):
        await tier.commit(key_of(b""), stage(tmp_path, b""))
        assert (await tier.stat(key_of(b""))).size == 0
        source = await tier.open(key_of(b""))
        assert source is not None and source.size == 0
        assert await read(source) == b""
        await source.aclose()

    run_on_tier(body)


def test_a_staged_file_is_invisible_until_committed_then_visible_whole(run_on_tier, tmp_path):
    data = os.urandom(300_000)
    key = key_of(data)

    async def body(tier):
        staged = stage(tmp_path, data)
        assert await tier.stat(key) is None
        assert await tier.open(key) is None
        assert await tier.read_small(key) is None
        assert [e.key async for e in tier.entries("blobs/")] == []
        await tier.commit(key, staged)
        assert (await tier.stat(key)).size == len(data)
        assert await tier.read_small(key) == data
        source = await tier.open(key)
        assert await read(source) == data
        await source.aclose()

    run_on_tier(body)


def test_readers_during_a_commit_see_nothing_or_the_whole_object(run_on_tier, tmp_path):
    data = os.urandom(MIN_PART_SIZE + 1024 * 1024)  # S3 sends it in two parts
    key = key_of(data)

    async def body(tier):
        committing = asyncio.ensure_future(tier.commit(key, stage(tmp_path, data)))
        seen = set()
        while not committing.done():
            found = await tier.stat(key)
            seen.add(None if found is None else found.size)
            await asyncio.sleep(0.01)
        await committing
        assert seen <= {None, len(data)}
        source = await tier.open(key)
        assert source.size == len(data) and await read(source) == data
        await source.aclose()

    run_on_tier(body)


def test_a_commit_replaces_what_was_there_atomically(run_on_tier, tmp_path):
    new = b'{"digest": "the new one"}'

    async def body(tier):
        await tier.commit("tags/r/x/t.json", stage(tmp_path, b'{"digest": "old"}'))
        await tier.commit("tags/r/x/t.json", stage(tmp_path, new))
        assert await tier.read_small("tags/r/x/t.json") == new
        source = await tier.open("tags/r/x/t.json")
        assert source.size == len(new) and await read(source) == new
        await source.aclose()

    run_on_tier(body)


def test_a_commit_whose_staged_file_went_fails_and_leaves_nothing(run_on_tier, tmp_path):
    async def body(tier):
        with pytest.raises(FileNotFoundError):
            await tier.commit(key_of(b"gone"), Staged(str(tmp_path / "no-such-file"), 4))
        assert await tier.stat(key_of(b"gone")) is None

    run_on_tier(body)


# --- S3 only ------------------------------------------------------------------------------------
def test_s3_refuses_a_commit_whose_bytes_do_not_hash_to_the_key(tmp_path, weed):
    """The key's digest goes up as ChecksumSHA256: S3 itself rejects bytes that are not the blob."""
    key = "blobs/sha256/ab/" + "ab" * 32

    async def body(tier):
        with pytest.raises(ContentRejected, match="BadDigest|checksum|Checksum"):
            await tier.commit(key, stage(tmp_path, b"these bytes are not the blob"))
        assert await tier.stat(key) is None

    asyncio.run(_with_s3(weed, body))


def test_s3_multipart_uploads_land_whole_and_leave_no_parts(tmp_path, weed):
    data = os.urandom(40 * 1024 * 1024)  # three parts
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    key = key_of(data)

    async def body(tier):
        await tier.commit(key, stage(tmp_path, data))
        found = await tier.stat(key)
        assert found is not None and (found.size, found.digest) == (len(data), digest)
        source = await tier.open(key)
        assert await read(source) == data
        assert await read(source, MIN_PART_SIZE - 3, MIN_PART_SIZE + 3) == data[MIN_PART_SIZE - 3 : MIN_PART_SIZE + 3]
        uploads = await tier._client.list_multipart_uploads(Bucket=tier.bucket, Prefix=tier.prefix)
        assert not uploads.get("Uploads")

    asyncio.run(_with_s3(weed, body))


def test_s3_an_object_deleted_after_open_fails_the_read_instead_of_ending_it_short(tmp_path, weed):
    data = os.urandom(100_000)

    async def body(tier):
        await tier.commit(key_of(data), stage(tmp_path, data))
        source = await tier.open(key_of(data))
        await tier.delete(key_of(data))
        with pytest.raises(OSError):
            await read(source)

    asyncio.run(_with_s3(weed, body))


def test_s3_a_read_cut_off_midway_raises_instead_of_ending_short(tmp_path, weed):
    data = os.urandom(1024 * 1024)
    # The HEAD of `open` and the GET of `chunks` each take a connection or share one: the
    # answer carrying the body is cut off either way.
    forwarder = CuttingForwarder(weed.port, cuts=[300_000, 300_000])

    async def body(tier):
        await tier.commit(key_of(data), stage(tmp_path, data))

        async def through_forwarder(cut_off):
            source = await cut_off.open(key_of(data))
            got = bytearray()
            with pytest.raises(TierUnavailable):
                async for chunk in source.chunks():
                    got += chunk
            assert len(got) < len(data)

        await _with_s3(weed, through_forwarder, bucket=tier.bucket, endpoint=forwarder.url)

    try:
        asyncio.run(_with_s3(weed, body))
    finally:
        forwarder.close()
