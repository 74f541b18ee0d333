"""The store across a local disk and a shared tier (the in-memory one standing in for S3): what is
read from where, what stays on disk, and what reaches the shared tier."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from regcache.oci.digest import Digest
from regcache.storage.base import ContentRejected, blob_key, manifest_key
from regcache.storage.disk import DiskTier, StoredFile
from regcache.storage.local_index import LocalIndex
from regcache.storage.tiered import TieredStore
from tests.memory_tier import InMemoryTier


def staged(tmp_path: Path, data: bytes) -> StoredFile:
    path = tmp_path / "cache" / "staging" / os.urandom(8).hex()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return StoredFile(str(path), len(data))


async def settled(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def test_an_object_being_read_or_not_yet_shared_stays_on_disk_past_the_limit(tmp_path):
    read_one, pending = os.urandom(600), os.urandom(600)

    async def main():
        shared = InMemoryTier()
        store = TieredStore(DiskTier(tmp_path / "cache"), shared, LocalIndex(limit=1000))
        await store.commit(blob_key(Digest.of(read_one)), staged(tmp_path, read_one), replicate=False)
        source = await store.open(blob_key(Digest.of(read_one)))
        # Over the limit, but one is being read and the other has not reached the shared tier.
        await store.commit(blob_key(Digest.of(pending)), staged(tmp_path, pending))
        assert store.exists_locally(blob_key(Digest.of(read_one)))
        assert store.exists_locally(blob_key(Digest.of(pending)))
        assert b"".join([c async for c in source.chunks()]) == read_one
        await source.aclose()
        assert not store.local.exists(blob_key(Digest.of(read_one)))  # closed: evicted at once
        store.start()
        try:
            assert await settled(lambda: blob_key(Digest.of(pending)) in shared.objects)
            assert shared.objects[blob_key(Digest.of(pending))] == pending
            assert not list((tmp_path / "cache" / "uploads").iterdir())
        finally:
            await store.close()

    asyncio.run(main())


def test_uploads_left_by_a_previous_run_go_up_at_the_next_start(tmp_path):
    data = os.urandom(1000)
    key = blob_key(Digest.of(data))

    async def main():
        first = TieredStore(DiskTier(tmp_path / "cache"), InMemoryTier())
        await first.commit(key, staged(tmp_path, data))  # never started: the upload is pending
        await first.close()
        shared = InMemoryTier()
        second = TieredStore(DiskTier(tmp_path / "cache"), shared)
        assert second.start() == 1
        try:
            assert await settled(lambda: key in shared.objects)
        finally:
            await second.close()

    asyncio.run(main())


def test_a_local_copy_the_shared_tier_refuses_is_deleted(tmp_path):
    class Refusing(InMemoryTier):
        async def commit(self, key, staged):
            raise ContentRejected("BadDigest")

    data = os.urandom(1000)
    key = blob_key(Digest.of(data))

    async def main():
        store = TieredStore(DiskTier(tmp_path / "cache"), Refusing())
        store.start()
        try:
            await store.commit(key, staged(tmp_path, data))
            assert await settled(lambda: not store.local.exists(key))
        finally:
            await store.close()

    asyncio.run(main())


def test_small_objects_found_only_in_the_shared_tier_are_verified_and_kept_locally(tmp_path):
    good, bad = b'{"schemaVersion": 2}', b'{"schemaVersion": 1}'
    good_key, lying_key = manifest_key(Digest.of(good)), manifest_key(Digest.of(b"another manifest"))

    async def main():
        shared = InMemoryTier()
        await shared.put_small(good_key, good)
        await shared.put_small(lying_key, bad)
        store = TieredStore(DiskTier(tmp_path / "cache"), shared)
        assert await store.read_small(good_key) == good
        assert store.exists_locally(good_key)
        assert await store.read_small(lying_key) is None
        assert lying_key not in shared.objects  # deleted, so the next pull fetches it again
        await store.close()

    asyncio.run(main())


def test_the_shared_tier_is_reached_through_the_store_and_absent_without_one(tmp_path):
    data = os.urandom(5000)
    key = blob_key(Digest.of(data))

    async def main():
        alone = TieredStore(DiskTier(tmp_path / "alone"))
        assert not alone.has_shared
        assert await alone.open_shared(key) is None and await alone.stat_shared(key) is None
        with pytest.raises(LookupError):
            await alone.presign(key, 60)
        shared = InMemoryTier()
        store = TieredStore(DiskTier(tmp_path / "cache"), shared)
        assert store.has_shared and await store.open_shared(key) is None
        await shared.put_small(key, data)
        source = await store.open_shared(key)
        assert source.size == len(data) and b"".join([c async for c in source.chunks(100)]) == data[100:]
        assert (await store.stat_shared(key)).size == len(data)
        assert key in await store.presign(key, 60)
        await store.close()

    asyncio.run(main())


def test_a_stored_file_that_shrinks_while_read_fails_the_read_instead_of_ending_it_short(tmp_path):
    data = os.urandom(3 * 1024 * 1024)
    key = blob_key(Digest.of(data))

    async def main():
        store = TieredStore(DiskTier(tmp_path / "cache"))
        await store.commit(key, staged(tmp_path, data))
        source = await store.open(key)
        assert source.fileno() >= 0 and await source.readable(0, source.size) == source.size
        os.truncate(tmp_path / "cache" / key, 1024 * 1024 + 5)
        got = bytearray()
        with pytest.raises(OSError, match="shrank"):
            async for chunk in source.chunks():
                got += chunk
        assert bytes(got) == data[: 1024 * 1024 + 5]
        await source.aclose()

    asyncio.run(main())
