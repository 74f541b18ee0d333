"""The S3 tier against a real S3 server (SeaweedFS): what one replica caches, another serves.

Every test gets its own bucket; the upstream is the session's distribution registry, stopped
where a test must prove that bytes came from S3 (containerd would otherwise fall back to it).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import BIG_REPO, REPO, Upstream
from tests.fakes import SwitchableForwarder
from tests.peers.containerd import Containerd
from tests.peers.net import clean_env, free_port
from tests.peers.seaweed import SeaweedS3
from tests.support import ROOT, Regcache, blob_path, request, stored_blob, wait_until


@pytest.fixture(scope="module")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    with SeaweedS3(tmp_path_factory.mktemp("weed")) as s3:
        yield s3


@pytest.fixture
def bucket(weed: SeaweedS3) -> str:
    return weed.bucket(f"regcache-{uuid.uuid4().hex[:12]}")


def s3_env(s3: SeaweedS3, **extra: str) -> dict[str, str]:
    """The standard AWS variables, as an operator would set them for an S3-compatible store."""
    return {
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        "AWS_REGION": s3.region,
        "AWS_ENDPOINT_URL_S3": s3.endpoint,
        **extra,
    }


@pytest.fixture
def start_s3_cache(
    make_regcache: Callable[..., Regcache], weed: SeaweedS3, bucket: str, upstream: Upstream
) -> Callable[..., Regcache]:
    def start(*args: str, upstream_arg: list[str] | None = None) -> Regcache:
        return make_regcache(
            "-b", bucket, *(upstream.upstream_arg() if upstream_arg is None else upstream_arg), *args, env=s3_env(weed)
        )

    return start


def bucket_keys(s3: SeaweedS3, bucket: str) -> set[str]:
    listed = s3.client().list_objects_v2(Bucket=bucket)
    return {item["Key"] for item in listed.get("Contents", [])}


def bucket_object(s3: SeaweedS3, bucket: str, key: str) -> tuple[bytes, dict]:
    got = s3.client().get_object(Bucket=bucket, Key=key)
    return got["Body"].read(), got


def blob_key(digest: str, prefix: str = "") -> str:
    algorithm, encoded = digest.split(":", 1)
    return f"{prefix}blobs/{algorithm}/{encoded[:2]}/{encoded}"


def uploads_done(cache: Regcache, s3: SeaweedS3, bucket: str, digests, timeout: float = 30.0) -> None:
    """Wait until nothing is pending and (when named) the blobs are in the bucket: a client's
    last byte can arrive just before the fill commits and queues its upload."""

    def done() -> bool:
        if not {blob_key(d) for d in digests} <= bucket_keys(s3, bucket):
            return False
        return cache.metrics().get("regcache_s3_uploads_pending") == 0.0

    assert wait_until(done, timeout), cache.log()[-3000:]


def pull_image(cache: Regcache, upstream: Upstream, tag: str = "1.0") -> None:
    manifest = cache.manifest(upstream.ns, REPO, tag)
    assert manifest.status == 200, manifest.body
    for digest in upstream.app.blob_digests:
        got = cache.blob(upstream.ns, REPO, digest)
        assert got.status == 200 and got.body == upstream.app.blob(digest)


def dead_upstream(upstream: Upstream) -> list[str]:
    """An --upstream entry for the test registry's name that nothing answers."""
    return ["--upstream", f"{upstream.ns}=http://127.0.0.1:{free_port()}"]


def test_a_cold_pull_fills_the_bucket_with_verified_bytes(start_s3_cache, weed, bucket, upstream):
    cache = start_s3_cache("--s3-prefix", "team-a")
    pull_image(cache, upstream)
    uploads_done(cache, weed, bucket, [])
    assert wait_until(lambda: len(bucket_keys(weed, bucket)) >= len(upstream.app.blob_digests) + 3)
    keys = bucket_keys(weed, bucket)
    assert all(key.startswith("team-a/") for key in keys)
    for digest in upstream.app.blob_digests:
        body, meta = bucket_object(weed, bucket, blob_key(digest, "team-a/"))
        assert hashlib.sha256(body).hexdigest() == digest.split(":")[1]
        assert meta["Metadata"]["digest"] == digest
    # The manifest by digest, its metadata, and the tag pointing at it.
    manifest_key = blob_key(upstream.app.manifest_digest, "team-a/").replace("blobs/", "manifests/", 1)
    assert bucket_object(weed, bucket, manifest_key)[0] == upstream.app.manifest_bytes
    tag = json.loads(bucket_object(weed, bucket, f"team-a/tags/{upstream.ns}/{REPO}/1.0.json")[0])
    assert tag["digest"] == upstream.app.manifest_digest
    # Nothing half-written is left in the bucket or the local dir.
    assert not cache.staging_files()
    assert not list((cache.cache_dir / "uploads").iterdir())


def test_a_second_replica_serves_from_s3_with_its_upstream_unreachable(start_s3_cache, weed, bucket, upstream):
    first = start_s3_cache()
    pull_image(first, upstream)
    uploads_done(first, weed, bucket, upstream.app.blob_digests)

    second = start_s3_cache(upstream_arg=dead_upstream(upstream))
    pull_image(second, upstream)
    metrics = second.metrics()
    assert metrics['containerd_cache_total{result="hit"}'] >= 1 + len(upstream.app.blob_digests)
    assert metrics['regcache_served_bytes_total{source="s3"}'] >= len(upstream.app.blob(upstream.app.layer_digests[2]))
    # Copied into its local tier on the way: the next hit is local.
    for digest in upstream.app.blob_digests:
        assert stored_blob(second.cache_dir, digest) == upstream.app.blob(digest)
    assert metrics.get('regcache_s3_uploads_total{result="uploaded"}', 0) == 0


def test_concurrent_clients_of_a_blob_only_in_s3_share_one_copy(start_s3_cache, weed, bucket, upstream):
    first = start_s3_cache()
    layer = upstream.app.layer_digests[2]
    data = upstream.app.blob(layer)
    assert first.blob(upstream.ns, REPO, layer).body == data
    uploads_done(first, weed, bucket, [layer])

    second = start_s3_cache(upstream_arg=dead_upstream(upstream))
    results: list[bytes] = []
    clients = [
        threading.Thread(target=lambda: results.append(second.blob(upstream.ns, REPO, layer).body)) for _ in range(8)
    ]
    for client in clients:
        client.start()
    for client in clients:
        client.join(60)
    assert results == [data] * 8
    # One copy from S3, seven readers joined to it (not eight copies racing past each other).
    assert second.metrics()["regcache_fill_joins_total"] == 7


def test_concurrent_clients_of_a_cold_blob_in_s3_mode_share_one_download(start_s3_cache, upstream):
    """Clients that arrive while the first one asks S3 (and hears "not there") join its download."""
    cache = start_s3_cache()
    layer = upstream.big.layer_digests[0]
    data = upstream.big.blob(layer)
    results: list[bytes] = []
    clients = [
        threading.Thread(target=lambda: results.append(cache.blob(upstream.ns, BIG_REPO, layer).body)) for _ in range(8)
    ]
    for client in clients:
        client.start()
    for client in clients:
        client.join(120)
    assert results == [data] * 8
    received = cache.metrics()[f'regcache_upstream_bytes_total{{registry="{upstream.ns}"}}']
    assert received < 2 * len(data), f"{received / len(data):.1f} downloads of the blob for 8 clients"


def test_range_requests_are_served_from_s3(start_s3_cache, weed, bucket, upstream):
    first = start_s3_cache()
    layer = upstream.app.layer_digests[2]
    data = upstream.app.blob(layer)
    assert first.blob(upstream.ns, REPO, layer).body == data
    uploads_done(first, weed, bucket, [layer])

    second = start_s3_cache(upstream_arg=dead_upstream(upstream))
    offset = 1_000_003
    resumed = second.blob(upstream.ns, REPO, layer, Range=f"bytes={offset}-")
    assert resumed.status == 206
    assert resumed.header("Content-Range") == f"bytes {offset}-{len(data) - 1}/{len(data)}"
    assert resumed.body == data[offset:]
    middle = second.blob(upstream.ns, REPO, layer, Range="bytes=10-19")
    assert (middle.status, middle.body) == (206, data[10:20])


def push_blob(upstream: Upstream, repo: str, data: bytes) -> str:
    """A blob uploaded with the registry's own API (monolithic PUT)."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    base = upstream.registry.url
    started = request(f"{base}/v2/{repo}/blobs/uploads/", method="POST", headers={"Content-Length": "0"})
    assert started.status == 202, started.body
    location = started.header("Location") or ""
    location = location if location.startswith("http") else base + location
    sep = "&" if "?" in location else "?"
    put = urllib.request.Request(f"{location}{sep}digest={digest}", data=data, method="PUT")
    put.add_header("Content-Type", "application/octet-stream")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(put, timeout=120) as answer:
        assert answer.status == 201
    return digest


def test_a_large_blob_goes_up_in_parts_and_comes_back_whole(start_s3_cache, weed, bucket, upstream):
    data = os.urandom(208 * 1024 * 1024)
    digest = push_blob(upstream, BIG_REPO, data)
    first = start_s3_cache()
    got = first.blob(upstream.ns, BIG_REPO, digest)
    assert got.status == 200 and hashlib.sha256(got.body).hexdigest() == digest.split(":")[1]
    del got
    uploads_done(first, weed, bucket, [digest], timeout=120)
    head = weed.client().head_object(Bucket=bucket, Key=blob_key(digest))
    # A multipart upload's ETag ends in -<parts>: 13 parts of 16 MiB.
    assert head["ContentLength"] == len(data) and head["ETag"].strip('"').endswith("-13")
    assert not weed.client().list_multipart_uploads(Bucket=bucket).get("Uploads")

    second = start_s3_cache(upstream_arg=dead_upstream(upstream))
    again = second.blob(upstream.ns, BIG_REPO, digest)
    assert again.status == 200 and hashlib.sha256(again.body).hexdigest() == digest.split(":")[1]


@pytest.fixture
def outage(weed: SeaweedS3) -> Iterator[SwitchableForwarder]:
    """The S3 server as regcache reaches it, through a link the test can cut and restore."""
    link = SwitchableForwarder(weed.port)
    yield link
    link.close()


def test_pulls_keep_working_while_s3_is_down_and_uploads_catch_up_after(make_regcache, weed, bucket, outage, upstream):
    cache = make_regcache("-b", bucket, *upstream.upstream_arg(), env=s3_env(weed, AWS_ENDPOINT_URL_S3=outage.url))
    outage.down()
    # Cold content comes from the upstream, warm content from the local disk, without waiting
    # on S3 timeouts.
    started = time.monotonic()
    pull_image(cache, upstream)
    pull_image(cache, upstream)
    assert time.monotonic() - started < 20
    metrics = cache.metrics()
    assert sum(v for k, v in metrics.items() if k.startswith("regcache_tier_errors_total") and 'tier="s3"' in k) >= 1
    assert metrics["regcache_s3_uploads_pending"] >= len(upstream.app.blob_digests)
    warnings = [line for line in cache.log().splitlines() if "WARNING" in line and "S3 bucket" in line]
    assert len(warnings) == 1, warnings  # once per burst, not once per request

    outage.up()
    uploads_done(cache, weed, bucket, upstream.app.blob_digests, timeout=120)
    for digest in upstream.app.blob_digests:
        assert bucket_object(weed, bucket, blob_key(digest))[0] == upstream.app.blob(digest)
    assert "answers again" in cache.log()


def test_uploads_cut_off_by_a_restart_resume_at_the_next_start(make_regcache, weed, bucket, outage, upstream, scratch):
    cache_dir = scratch / "cache"
    env = s3_env(weed, AWS_ENDPOINT_URL_S3=outage.url)
    first = make_regcache("-b", bucket, *upstream.upstream_arg(), env=env, cache_dir=cache_dir)
    outage.down()
    pull_image(first, upstream)
    for digest in upstream.app.blob_digests:  # committed (and queued) just after the last byte
        stored_blob(cache_dir, digest)
    assert first.stop() == 0
    assert len(list((cache_dir / "uploads").iterdir())) >= len(upstream.app.blob_digests)

    second = make_regcache("-b", bucket, *dead_upstream(upstream), env=s3_env(weed), cache_dir=cache_dir)
    assert re.search(r"resuming \d+ uploads", second.log())
    uploads_done(second, weed, bucket, upstream.app.blob_digests, timeout=60)
    for digest in upstream.app.blob_digests:
        assert bucket_object(weed, bucket, blob_key(digest))[0] == upstream.app.blob(digest)
    assert not list((cache_dir / "uploads").iterdir())


def run_to_exit(args: list[str], env: dict[str, str], timeout: float = 30.0) -> tuple[int, str, float]:
    argv = [sys.executable, "-m", "regcache", "-p", str(free_port()), "-d", str(Path("/tmp") / "rc-s3-exit"), *args]
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=clean_env(**env), timeout=timeout)
    return done.returncode, done.stderr, time.monotonic() - started


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing bucket", "NoSuchBucket"),
        ("wrong secret", "SignatureDoesNotMatch|AccessDenied|InvalidAccessKeyId"),
        ("unreachable endpoint", "Could not connect|no answer|Connect"),
    ],
)
def test_an_unusable_bucket_stops_start_up_with_one_clear_line(weed, bucket, case, expected):
    name, env = bucket, s3_env(weed)
    if case == "missing bucket":
        name = "regcache-no-such-bucket"
    elif case == "wrong secret":
        env["AWS_SECRET_ACCESS_KEY"] = "not-the-secret"
    else:
        env["AWS_ENDPOINT_URL_S3"] = f"http://127.0.0.1:{free_port()}"
    code, stderr, took = run_to_exit(["-b", name], env)
    assert code != 0
    assert took < 20
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1, stderr
    assert f"'{name}'" in errors[0] and env["AWS_ENDPOINT_URL_S3"] in errors[0]
    assert re.search(expected, errors[0]), errors[0]


def test_a_small_local_tier_evicts_least_recently_used_and_keeps_serving_correct_bytes(
    start_s3_cache, weed, bucket, upstream
):
    layer = upstream.app.layer_digests[2]  # 3 MiB; the limit holds one such layer, not two
    cache = start_s3_cache("--local-cache-size", "5M")
    pull_image(cache, upstream)
    other = upstream.big.layer_digests[0]
    assert cache.blob(upstream.ns, BIG_REPO, other).status == 200
    uploads_done(cache, weed, bucket, [*upstream.app.blob_digests, other], timeout=60)
    wait_until(lambda: cache.metrics().get("regcache_local_evictions_total", 0) >= 1)
    metrics = cache.metrics()
    assert metrics["regcache_local_evictions_total"] >= 1
    # Nothing was dropped before it reached S3: every blob is in the bucket.
    keys = bucket_keys(weed, bucket)
    assert {blob_key(d) for d in [*upstream.app.blob_digests, other]} <= keys, (metrics, cache.log())
    local = sum(p.stat().st_size for p in cache.stored_files() if p.parts[-4] in ("blobs", "manifests"))
    assert local <= 5 * 1024 * 1024 + len(upstream.app.blob(layer))
    assert not blob_path(cache.cache_dir, other).exists() or not blob_path(cache.cache_dir, layer).exists()
    # Evicted objects come back from S3, correct.
    pull_image(cache, upstream)
    big = cache.blob(upstream.ns, BIG_REPO, other)
    assert hashlib.sha256(big.body).hexdigest() == other.split(":")[1]


def test_s3_redirect_answers_307_to_a_presigned_url(start_s3_cache, weed, bucket, upstream):
    first = start_s3_cache()
    pull_image(first, upstream)
    uploads_done(first, weed, bucket, upstream.app.blob_digests)
    second = start_s3_cache("--s3-redirect", upstream_arg=dead_upstream(upstream))
    layer = upstream.app.layer_digests[2]
    answer = second.blob(upstream.ns, REPO, layer)
    assert answer.status == 307
    location = answer.header("Location") or ""
    assert location.startswith(weed.endpoint) and "Signature" in location
    fetched = request(location)
    assert fetched.status == 200 and fetched.body == upstream.app.blob(layer)
    ranged = request(location, headers={"Range": "bytes=5-9"})
    assert (ranged.status, ranged.body) == (206, upstream.app.blob(layer)[5:10])
    # A HEAD is answered by the cache itself, with the size containerd needs.
    head = second.blob(upstream.ns, REPO, layer, method="HEAD")
    assert head.status == 200 and head.header("Content-Length") == str(len(upstream.app.blob(layer)))


def test_s3_objects_that_disagree_with_their_key_are_ignored_and_deleted(start_s3_cache, weed, bucket, upstream):
    layer = upstream.app.layer_digests[2]
    config = upstream.app.config_digest
    s3 = weed.client()
    # One object whose recorded digest is another's; one with the right record and wrong bytes.
    s3.put_object(Bucket=bucket, Key=blob_key(layer), Body=b"x" * 100, Metadata={"digest": config})
    wrong = bytearray(upstream.app.blob(config))
    wrong[0] ^= 1
    s3.put_object(Bucket=bucket, Key=blob_key(config), Body=bytes(wrong), Metadata={"digest": config})
    cache = start_s3_cache()

    good = cache.blob(upstream.ns, REPO, layer)
    assert good.status == 200 and good.body == upstream.app.blob(layer)
    assert wait_until(lambda: blob_key(layer) not in bucket_keys(weed, bucket) or _uploaded(weed, bucket, layer))

    try:
        cut = cache.blob(upstream.ns, REPO, config)
        assert cut.body != upstream.app.blob(config) or cut.status != 200
    except Exception:  # noqa: BLE001 - the connection closed before a complete-looking body: right
        pass
    assert wait_until(lambda: blob_key(config) not in bucket_keys(weed, bucket))
    again = cache.blob(upstream.ns, REPO, config)
    assert again.status == 200 and again.body == upstream.app.blob(config)


def _uploaded(weed: SeaweedS3, bucket: str, digest: str) -> bool:
    try:
        body, _ = bucket_object(weed, bucket, blob_key(digest))
    except Exception:  # noqa: BLE001
        return False
    return hashlib.sha256(body).hexdigest() == digest.split(":")[1]


@pytest.fixture(scope="module")
def containerd() -> Iterator[Containerd]:
    daemon = Containerd().start()
    yield daemon
    daemon.close()


@pytest.mark.parametrize("redirect", [False, True], ids=["streamed", "redirected"])
def test_containerd_pulls_from_a_replica_that_has_only_s3(start_s3_cache, weed, bucket, containerd, upstream, redirect):
    first = start_s3_cache()
    ref = f"{upstream.ns}/{REPO}:1.0"
    containerd.pull(ref, hosts_dir=containerd.hosts_dir(first.url))
    uploads_done(first, weed, bucket, upstream.app.blob_digests)
    containerd.remove_image(ref)
    containerd.remove_all_content()

    second = start_s3_cache(*(["--s3-redirect"] if redirect else []))
    upstream.registry.stop()
    try:
        containerd.pull(ref, hosts_dir=containerd.hosts_dir(second.url))
    finally:
        upstream.registry.start()
    assert ref in containerd.images()
    for digest in upstream.app.layer_digests:
        assert digest in containerd.content()
    assert second.cache_count("hit") >= 1 + len(upstream.app.blob_digests)
    if redirect:
        assert "status=307" in second.log()
    containerd.remove_image(ref)
    containerd.remove_all_content()
