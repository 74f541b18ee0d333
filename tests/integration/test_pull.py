"""Pulls through a real distribution registry: cold and warm, GET and HEAD, what is stored."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.conftest import REPO
from tests.support import blob_path, stored_blob, wait_until

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_ping_answers_like_a_registry(cache):
    resp = cache.get("/v2/", None)
    assert resp.status == 200
    assert json.loads(resp.body) == {}
    assert resp.header("Docker-Distribution-Api-Version") == "registry/2.0"


def test_cold_then_warm_manifest_by_tag(cache, upstream):
    app = upstream.app
    cold = cache.manifest(upstream.ns, REPO, "1.0")
    assert cold.status == 200
    assert cold.body == app.manifest_bytes
    assert cold.header("Docker-Content-Digest") == app.manifest_digest
    assert cold.header("Content-Type") == OCI_MANIFEST
    assert int(cold.header("Content-Length")) == len(app.manifest_bytes)
    before = upstream.registry.manifest_get_count("1.0")
    warm = cache.manifest(upstream.ns, REPO, "1.0")
    assert (warm.status, warm.body) == (200, app.manifest_bytes)
    assert warm.header("Docker-Content-Digest") == app.manifest_digest
    assert upstream.registry.manifest_get_count("1.0") == before, "a warm tag must not go upstream"
    assert cache.cache_count("miss") == 1 and cache.cache_count("hit") == 1


def test_head_of_uncached_manifest_stores_it_so_the_get_is_a_hit(cache, upstream):
    head = cache.manifest(upstream.ns, REPO, "1.0", method="HEAD")
    assert head.status == 200 and head.body == b""
    assert head.header("Docker-Content-Digest") == upstream.app.manifest_digest
    assert int(head.header("Content-Length")) == len(upstream.app.manifest_bytes)
    get = cache.manifest(upstream.ns, REPO, "1.0")
    assert get.body == upstream.app.manifest_bytes
    assert cache.cache_count("hit") == 1


def test_manifest_by_digest_and_blobs_cold_then_warm(cache, upstream):
    app = upstream.app
    by_digest = cache.manifest(upstream.ns, REPO, app.manifest_digest)
    assert by_digest.status == 200 and by_digest.body == app.manifest_bytes
    for digest in app.blob_digests:
        cold = cache.blob(upstream.ns, REPO, digest)
        assert cold.status == 200
        assert cold.body == app.blob(digest)
        assert cold.header("Docker-Content-Digest") == digest
        assert int(cold.header("Content-Length")) == len(app.blob(digest))
        assert stored_blob(cache.cache_dir, digest) == app.blob(digest)
    gets_before = {d: upstream.registry.blob_get_count(d) for d in app.blob_digests}
    for digest in app.blob_digests:
        warm = cache.blob(upstream.ns, REPO, digest)
        assert warm.body == app.blob(digest)
        head = cache.blob(upstream.ns, REPO, digest, method="HEAD")
        assert head.status == 200 and head.body == b""
        assert int(head.header("Content-Length")) == len(app.blob(digest))
        assert head.header("Docker-Content-Digest") == digest
    assert {d: upstream.registry.blob_get_count(d) for d in app.blob_digests} == gets_before


def test_blobs_are_stored_once_and_served_for_any_repository_and_registry(cache, upstream):
    digest = upstream.app.layer_digests[2]
    before = upstream.registry.blob_get_count(digest)
    assert cache.blob(upstream.ns, REPO, digest).status == 200
    # Same digest asked for under another repository and another registry name: a hit.
    other = cache.blob(upstream.ns, "other/repo", digest)
    elsewhere = cache.blob("registry.invalid", "some/thing", digest)
    assert other.body == elsewhere.body == upstream.app.blob(digest)
    assert upstream.registry.blob_get_count(digest) == before + 1
    assert cache.cache_count("hit") == 2


def test_range_requests_on_cached_blob(cache, upstream):
    digest = upstream.app.layer_digests[2]
    data = upstream.app.blob(digest)
    cache.blob(upstream.ns, REPO, digest)
    part = cache.blob(upstream.ns, REPO, digest, Range="bytes=100-1123")
    assert part.status == 206
    assert part.body == data[100:1124]
    assert part.header("Content-Range") == f"bytes 100-1123/{len(data)}"
    tail = cache.blob(upstream.ns, REPO, digest, Range=f"bytes={len(data) - 10}-")
    assert tail.status == 206 and tail.body == data[-10:]
    beyond = cache.blob(upstream.ns, REPO, digest, Range=f"bytes={len(data)}-")
    assert beyond.status == 416
    assert beyond.header("Content-Range") == f"bytes */{len(data)}"
    assert json.loads(beyond.body)["errors"][0]["code"]


def test_range_request_on_a_cold_blob_resumes_at_the_offset(cache, upstream):
    digest = upstream.app.layer_digests[2]
    data = upstream.app.blob(digest)
    resumed = cache.blob(upstream.ns, REPO, digest, Range="bytes=1000000-")
    assert resumed.status == 206
    assert resumed.header("Content-Range") == f"bytes 1000000-{len(data) - 1}/{len(data)}"
    assert resumed.body == data[1000000:]
    # The whole blob was fetched and stored, not just the range.
    assert stored_blob(cache.cache_dir, digest) == data


def test_skip_tags_are_always_fetched_and_never_stored(cache, upstream):
    before = upstream.registry.manifest_get_count("latest")
    for _ in range(2):
        resp = cache.manifest(upstream.ns, REPO, "latest")
        assert resp.status == 200 and resp.body == upstream.app.manifest_bytes
    assert upstream.registry.manifest_get_count("latest") == before + 2
    assert not (cache.cache_dir / "tags").exists() or not list((cache.cache_dir / "tags").rglob("latest.json"))
    assert cache.cache_count("skip") == 2


def test_custom_skip_tags_pattern(make_regcache, upstream):
    cache = make_regcache(*upstream.upstream_arg(), "-t", "^dev-")
    cache.manifest(upstream.ns, REPO, "dev-1")
    cache.manifest(upstream.ns, REPO, "latest")
    cache.manifest(upstream.ns, REPO, "latest")
    assert cache.cache_count("skip") == 1
    assert cache.cache_count("miss") == 1 and cache.cache_count("hit") == 1


def test_cache_manifests_no_fetches_manifests_every_time_but_caches_blobs(make_regcache, upstream):
    cache = make_regcache(*upstream.upstream_arg(), "-m", "no")
    before = upstream.registry.manifest_get_count("1.0")
    cache.manifest(upstream.ns, REPO, "1.0")
    cache.manifest(upstream.ns, REPO, "1.0")
    assert upstream.registry.manifest_get_count("1.0") == before + 2
    assert not cache.stored_files("manifests")
    digest = upstream.app.config_digest
    cache.blob(upstream.ns, REPO, digest)
    assert cache.blob(upstream.ns, REPO, digest).body == upstream.app.config_bytes
    assert cache.cache_count("hit") == 1


def test_private_registry_manifests_are_not_cached_but_blobs_are(make_regcache, upstream):
    cache = make_regcache(*upstream.upstream_arg(), "--private-registry", upstream.ns)
    before = upstream.registry.manifest_get_count("1.0")
    for _ in range(2):
        assert cache.manifest(upstream.ns, REPO, "1.0").body == upstream.app.manifest_bytes
    assert upstream.registry.manifest_get_count("1.0") == before + 2
    assert not cache.stored_files("manifests") and not cache.stored_files("tags")
    digest = upstream.app.config_digest
    cache.blob(upstream.ns, REPO, digest)
    # Stored apart, under the registry (test_auth: served only to clients the registry accepts).
    assert stored_blob(cache.cache_dir / "private" / upstream.ns, digest) == upstream.app.config_bytes
    assert not cache.stored_files("blobs")


def test_cached_content_is_served_with_the_upstream_stopped(cache, upstream):
    app = upstream.app
    cache.manifest(upstream.ns, REPO, "1.0")
    for digest in app.blob_digests:
        cache.blob(upstream.ns, REPO, digest)
    upstream.registry.stop()
    try:
        assert cache.manifest(upstream.ns, REPO, "1.0").body == app.manifest_bytes
        assert cache.manifest(upstream.ns, REPO, app.manifest_digest).body == app.manifest_bytes
        for digest in app.blob_digests:
            assert cache.blob(upstream.ns, REPO, digest).body == app.blob(digest)
        # Uncached content needs the upstream: 502 naming the registry, in the OCI error format.
        missing = cache.manifest(upstream.ns, REPO, "2.0")
        assert missing.status == 502
        error = json.loads(missing.body)["errors"][0]
        assert upstream.ns in error["message"]
    finally:
        upstream.registry.start()


def test_upstream_404_is_forwarded_and_not_stored(cache, upstream):
    for _ in range(2):
        resp = cache.manifest(upstream.ns, REPO, "no-such-tag")
        assert resp.status == 404
        assert json.loads(resp.body)["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    missing_blob = "sha256:" + "0" * 64
    resp = cache.blob(upstream.ns, REPO, missing_blob)
    assert resp.status == 404
    assert json.loads(resp.body)["errors"][0]["code"] == "BLOB_UNKNOWN"
    assert not blob_path(cache.cache_dir, missing_blob).exists()
    assert not cache.stored_files("tags")
    assert cache.cache_count("skip") == 3


def test_tag_cached_as_a_type_the_client_does_not_accept_is_fetched_again(cache, upstream):
    cache.manifest(upstream.ns, REPO, "1.0", accept=OCI_MANIFEST)
    before = upstream.registry.manifest_get_count("1.0", successful_only=False)
    docker_only = "application/vnd.docker.distribution.manifest.v2+json"
    resp = cache.manifest(upstream.ns, REPO, "1.0", accept=docker_only)
    # The cached OCI manifest is not served to a client that cannot take it: the cache asks the
    # upstream, and distribution (which holds only the OCI form) answers 404.
    assert upstream.registry.manifest_get_count("1.0", successful_only=False) == before + 1
    assert resp.status == 404 and resp.body != upstream.app.manifest_bytes
    assert cache.manifest(upstream.ns, REPO, "1.0", accept=OCI_MANIFEST).body == upstream.app.manifest_bytes


def test_missing_ns_is_a_400_that_says_so(cache):
    resp = cache.get(f"/v2/{REPO}/manifests/1.0", None)
    assert resp.status == 400
    assert "ns" in json.loads(resp.body)["errors"][0]["message"]


def test_docker_registry_mirrors_mean_docker_hub(cache, upstream):
    # No network here: what matters is that the request is understood as docker.io, not refused.
    resp = cache.get("/v2/library/alpine/manifests/3.20", None, headers={"User-Agent": "docker/27.0.1 go/go1.22"})
    assert resp.status != 400
    assert "registry-1.docker.io" in resp.body.decode() or "docker.io" in resp.body.decode()


@pytest.mark.parametrize(
    "path, status",
    [
        ("/v2/UPPER/manifests/1.0", 400),
        ("/v2/a//b/manifests/1.0", 400),
        ("/v2/test/app/manifests/.bad", 400),
        ("/v2/test/app/blobs/sha256:xyz", 400),
        ("/v2/test/app/blobs/nodigest", 400),
        ("/v2/UPPER/tags/list", 400),
        ("/v2/test/app/referrers/sha256:xyz", 400),
        ("/v2/test/app/tags", 404),
        ("/v3/", 404),
        ("/v2/test/app/../../etc/passwd/blobs/sha256:" + "a" * 64, 400),
    ],
)
def test_bad_requests_get_json_errors(cache, upstream, path, status):
    resp = cache.get(path, upstream.ns)
    assert resp.status == status
    assert resp.header("Content-Type").startswith("application/json")
    assert json.loads(resp.body)["errors"][0]["message"]


@pytest.mark.parametrize("method", ["PUT", "POST", "DELETE", "PATCH"])
def test_push_and_delete_are_405(cache, upstream, method):
    resp = cache.get(f"/v2/{REPO}/manifests/1.0", upstream.ns, method=method)
    assert resp.status == 405
    error = json.loads(resp.body)["errors"][0]
    assert error["code"] == "UNSUPPORTED" and "pull-only" in error["message"]


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "GET"])
def test_blob_uploads_are_refused_as_pull_only(cache, upstream, method):
    resp = cache.get(f"/v2/{REPO}/blobs/uploads/", upstream.ns, method=method)
    assert resp.status == 405
    error = json.loads(resp.body)["errors"][0]
    assert error["code"] == "UNSUPPORTED" and "pull-only" in error["message"]


def test_bad_ns_is_400(cache):
    resp = cache.get(f"/v2/{REPO}/manifests/1.0", "not a host")
    assert resp.status == 400
    assert "ns" in json.loads(resp.body)["errors"][0]["message"]


def test_health_and_readiness(cache):
    assert cache.get("/healthz", None).status == 200
    assert cache.get("/readyz", None).status == 200
    cache.cache_dir.chmod(0o500)
    try:
        # root ignores mode bits; make the staging dir a file instead to break writes for real.
        staging = cache.cache_dir / "staging"
        staging.rename(cache.cache_dir / "staging.moved")
        staging.write_text("not a directory")
        resp = cache.get("/readyz", None)
        assert resp.status == 503
        assert str(cache.cache_dir) in json.loads(resp.body)["errors"][0]["message"]
    finally:
        cache.cache_dir.chmod(0o755)
        staging.unlink()
        (cache.cache_dir / "staging.moved").rename(staging)
    assert cache.get("/readyz", None).status == 200


def test_metrics_expose_operator_counters(cache, upstream):
    cache.manifest(upstream.ns, REPO, "1.0")
    cache.blob(upstream.ns, REPO, upstream.app.config_digest)
    cache.blob(upstream.ns, REPO, upstream.app.config_digest)
    samples = cache.metrics()
    assert samples['containerd_cache_total{result="miss"}'] == 2
    assert samples['containerd_cache_total{result="hit"}'] == 1
    assert samples[f'regcache_upstream_requests_total{{registry="{upstream.ns}",status="200"}}'] == 2
    assert samples['regcache_served_bytes_total{source="disk"}'] == len(upstream.app.config_bytes)
    assert samples[f'regcache_upstream_response_seconds_count{{registry="{upstream.ns}"}}'] == 2
    # The download ends (fsync, rename) just after its client got the last byte.
    assert wait_until(lambda: cache.metrics()["regcache_fills_in_flight"] == 0, timeout=5)


def test_one_log_line_per_request_with_its_fields(cache, upstream):
    cache.manifest(upstream.ns, REPO, "1.0")
    cache.blob(upstream.ns, REPO, upstream.app.config_digest)

    def lines():
        return [line for line in cache.log().splitlines() if "regcache.access" in line and "/v2/test/app" in line]

    # A request's line is written as it finishes, a moment after the client has the last byte.
    assert wait_until(lambda: len(lines()) == 2, timeout=5), lines()
    lines = lines()
    assert f"ns={upstream.ns}" in lines[0] and "status=200" in lines[0] and "cache=miss" in lines[0]
    assert f"bytes={len(upstream.app.config_bytes)}" in lines[1]


def test_a_head_logs_no_body_bytes_even_for_an_answer_tornado_would_have_had_a_body(cache, upstream):
    assert cache.get("/v2/", None, method="HEAD").status == 200
    refused = cache.get(f"/v2/{REPO}/manifests/1.0", None, method="HEAD")  # no ns: a 400 with a JSON body
    assert refused.status == 400 and refused.header("Content-Length") not in (None, "0")

    def lines():
        return [line for line in cache.log().splitlines() if "regcache.access" in line and "HEAD /v2/" in line]

    assert wait_until(lambda: len(lines()) == 2, timeout=5), lines()
    assert all(" bytes=0 " in line for line in lines()), lines()
