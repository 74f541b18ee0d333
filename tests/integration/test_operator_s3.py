"""The operator's commands with an S3 tier (SeaweedFS): they see and act on the bucket as well as
the local disk, never remove what is still pending upload, and say in one line when the bucket
cannot be used."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.fakes import SwitchableForwarder
from tests.integration.operator_cache import MIB, OperatorImages, build, fill, pull, regcache, row
from tests.integration.test_s3 import bucket_keys, s3_env
from tests.peers.net import free_port
from tests.peers.seaweed import SeaweedS3
from tests.support import Regcache, blob_path, wait_until


@pytest.fixture(scope="module")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    with SeaweedS3(tmp_path_factory.mktemp("weed")) as s3:
        yield s3


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorImages]:
    built = build(tmp_path_factory.mktemp("operator"))
    yield built
    built.close()


@pytest.fixture
def bucket(weed: SeaweedS3) -> str:
    return weed.bucket(f"operator-{uuid.uuid4().hex[:12]}")


def uploaded(cache: Regcache) -> None:
    assert wait_until(lambda: cache.metrics().get("regcache_s3_uploads_pending") == 0.0, 60), cache.log()[-2000:]


@pytest.fixture
def start(make_regcache, weed, bucket, images) -> Callable[..., Regcache]:
    def start_one(*args: str, **kwargs) -> Regcache:
        return make_regcache("-b", bucket, *images.upstream_args(), *args, env=s3_env(weed), **kwargs)

    return start_one


def test_ls_and_du_see_the_bucket_also_from_a_replica_with_an_empty_disk(start, weed, bucket, images, tmp_path):
    cache = start()
    fill(cache, images)
    uploaded(cache)
    env = s3_env(weed)
    here = regcache("ls", "-d", str(cache.cache_dir), "-b", bucket, env=env)
    assert here.code == 0, here.err
    assert row(here, images.first.host, "ops/web", "1.0").endswith("disk+s3")

    empty = tmp_path / "replica"
    empty.mkdir()
    elsewhere = regcache("ls", "-d", str(empty), "-b", bucket, env=env)
    assert row(elsewhere, images.first.host, "ops/db", "1").endswith("  s3")
    assert len(elsewhere.lines) == 1 + 4 + 1

    usage = regcache("du", "-d", str(empty), "-b", bucket, "--json", env=env).json()
    s3_total = next(t for t in usage["tiers"] if t["tier"] == "s3" and t["kind"] == "total")
    assert s3_total["objects"] == len(bucket_keys(weed, bucket))
    assert next(t for t in usage["tiers"] if t["tier"] == "disk" and t["kind"] == "total")["objects"] == 0


def test_verify_rehashes_the_bucket_and_deletes_a_corrupt_object(start, weed, bucket, images):
    cache = start()
    fill(cache, images)
    uploaded(cache)
    layer = images.db.layer_digests[0]
    key = f"blobs/sha256/{layer[7:9]}/{layer[7:]}"
    weed.client().put_object(Bucket=bucket, Key=key, Body=b"not the layer")
    env = s3_env(weed)

    found = regcache("verify", "-d", str(cache.cache_dir), "-b", bucket, "--tier", "s3", env=env)
    assert found.code == 1, found.err
    assert f"BAD s3 {key} (13 B)" in found.lines
    assert f"hashes to sha256:{hashlib.sha256(b'not the layer').hexdigest()}" in found.out
    assert found.lines[-1].endswith("checked, 1 bad")

    assert regcache("verify", "-d", str(cache.cache_dir), "-b", bucket, "--delete", env=env).code == 1
    assert key not in bucket_keys(weed, bucket)
    assert regcache("verify", "-d", str(cache.cache_dir), "-b", bucket, env=env).code == 0


def test_prune_max_size_on_the_bucket_removes_the_oldest_upload_and_the_rest_serves_from_s3(
    start, weed, bucket, images, tmp_path
):
    cache = start()
    pull(cache, images.first.host, "ops/db", "1")
    uploaded(cache)
    time.sleep(1.5)  # S3 records upload times to the second
    fill(cache, images)
    uploaded(cache)
    env = s3_env(weed)
    empty = tmp_path / "replica"
    empty.mkdir()
    total = regcache("du", "-d", str(empty), "-b", bucket, "--json", env=env).json()["tiers"][-1]["size"]

    done = regcache("prune", "-d", str(empty), "-b", bucket, "--max-size", str(total - 2 * MIB), env=env)
    assert done.code == 0, done.err
    assert done.lines[1].split()[:3] == ["removed", "tag", f"{images.first.host}/ops/db:1"]
    keys = bucket_keys(weed, bucket)
    assert f"blobs/sha256/{images.db.layer_digests[0][7:9]}/{images.db.layer_digests[0][7:]}" not in keys

    replica = start("--upstream", f"{images.first.host}=http://127.0.0.1:{free_port()}", cache_dir=empty / "cache")
    pull(replica, images.first.host, "ops/web", "1.0")  # from the bucket: the registry is unreachable
    assert replica.manifest(images.first.host, "ops/db", "1").status >= 500


def test_prune_keeps_what_is_pending_upload_and_what_it_needs(make_regcache, weed, bucket, images):
    link = SwitchableForwarder(weed.port)
    try:
        cache = make_regcache("-b", bucket, *images.upstream_args(), env=s3_env(weed, AWS_ENDPOINT_URL_S3=link.url))
        link.down()
        pull(cache, images.first.host, "ops/db", "1")
        assert wait_until(lambda: blob_path(cache.cache_dir, images.db.layer_digests[0]).exists())
        assert cache.stop() == 0
    finally:
        link.close()

    done = regcache("prune", "-d", str(cache.cache_dir), "-b", bucket, "--max-size", "1", env=s3_env(weed))
    assert done.code == 0, done.err
    assert done.lines[-1] == "Still over the limit: what is left is pending upload to S3 or needed by it."
    for digest in images.db.blob_digests:
        assert blob_path(cache.cache_dir, digest).exists()
    assert "ops/db" in regcache("ls", "-d", str(cache.cache_dir), "-b", bucket, env=s3_env(weed)).out


@pytest.mark.parametrize("case", ["missing bucket", "unreachable endpoint"])
def test_an_unusable_bucket_is_one_line_and_exit_code_2(weed, bucket, case, tmp_path):
    env, name = s3_env(weed), bucket
    if case == "missing bucket":
        name = "operator-no-such-bucket"
    else:
        env["AWS_ENDPOINT_URL_S3"] = f"http://127.0.0.1:{free_port()}"
    for command in ("ls", "du", "verify", "prune --max-size 1G"):
        done = regcache(*command.split(), "-d", str(tmp_path), "-b", name, env=env)
        assert done.code == 2, (command, done.err)
        assert len(done.err.splitlines()) == 1 and "Traceback" not in done.err, done.err
        assert f"S3 bucket '{name}' at {env['AWS_ENDPOINT_URL_S3']}" in done.err
