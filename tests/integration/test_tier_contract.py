"""One contract for every tier: what the store layer relies on, run against the disk and a real
S3 server (SeaweedFS) alike."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

from regcache.storage.disk import DiskTier
from regcache.storage.s3 import S3Tier
from tests.peers.seaweed import SeaweedS3


@pytest.fixture(scope="module")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    with SeaweedS3(tmp_path_factory.mktemp("weed")) as s3:
        yield s3


async def _with_tier(kind: str, tmp_path, weed: SeaweedS3, body) -> None:
    if kind == "disk":
        await body(DiskTier(tmp_path / "cache"))
        return
    bucket = weed.bucket(f"contract-{os.getpid()}-{id(tmp_path) % 100000}")
    env = {
        "AWS_ACCESS_KEY_ID": weed.access_key,
        "AWS_SECRET_ACCESS_KEY": weed.secret_key,
        "AWS_REGION": weed.region,
        "AWS_ENDPOINT_URL_S3": weed.endpoint,
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    tier = S3Tier(bucket, prefix="contract")
    try:
        await tier.start()
        await tier.check()
        await body(tier)
    finally:
        await tier.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(params=["disk", "s3"])
def run_on_tier(request, tmp_path, weed):
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

    run_on_tier(body)


def test_keys_lists_what_is_under_a_prefix(run_on_tier):
    async def body(tier):
        for key in ("tags/r/a/1.json", "tags/r/a/2.json", "tags/r/b/1.json"):
            await tier.put_small(key, b"{}")
        assert sorted([k async for k in tier.keys("tags/r/a/")]) == ["tags/r/a/1.json", "tags/r/a/2.json"]

    run_on_tier(body)


def test_s3_refuses_an_upload_whose_bytes_do_not_hash_to_the_digest(tmp_path, weed):
    """The digest goes up as ChecksumSHA256: S3 itself rejects bytes that are not the blob."""
    from regcache.storage.s3 import ContentRejected

    path = tmp_path / "blob"
    path.write_bytes(b"these bytes are not the blob")
    wrong = "sha256:" + "ab" * 32

    async def body(tier):
        with pytest.raises(ContentRejected, match="BadDigest|checksum|Checksum"):
            await tier.upload_file("blobs/sha256/ab/" + "ab" * 32, str(path), path.stat().st_size, "x", wrong)
        assert await tier.stat("blobs/sha256/ab/" + "ab" * 32) is None

    asyncio.run(_with_tier("s3", tmp_path, weed, body))


def test_s3_multipart_uploads_land_whole_and_leave_no_parts(tmp_path, weed):
    import hashlib

    data = os.urandom(40 * 1024 * 1024)  # three parts
    path = tmp_path / "big"
    path.write_bytes(data)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    key = f"blobs/sha256/{digest[7:9]}/{digest[7:]}"

    async def body(tier):
        await tier.upload_file(key, str(path), len(data), "application/octet-stream", digest)
        found = await tier.stat(key)
        assert found is not None and (found.size, found.digest) == (len(data), digest)
        opened = await tier.open_stream(key)
        assert opened is not None
        got = b"".join([chunk async for chunk in opened[1]])
        assert got == data

    asyncio.run(_with_tier("s3", tmp_path, weed, body))
