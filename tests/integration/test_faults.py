"""Upstreams that lie, cut off, stall or drop: nothing wrong is stored, no client gets a
complete-looking wrong body. The fake upstream injects what a real registry cannot."""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
import urllib.parse

import pytest

from tests.fakes import (
    digest_of,
    drop_after,
    drop_before_headers,
    serve,
    serve_throttled,
    stall_after,
    truncate,
)
from tests.support import blob_path, read_blob, wait_until

REPO = "fault/app"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture
def faulty_cache(make_regcache, fake):
    return make_regcache(*fake.upstream_arg(), "--upstream-idle-timeout", "2")


def assert_nothing_stored(cache, digest: str) -> None:
    # A failed download's staging file goes just after its clients were cut off.
    assert wait_until(lambda: cache.staging_files() == [], timeout=5), cache.staging_files()
    assert not blob_path(cache.cache_dir, digest).exists()


def test_blob_whose_bytes_do_not_match_its_digest_is_not_stored(faulty_cache, fake):
    real = os.urandom(2 * 1024 * 1024)
    lie = os.urandom(len(real))
    digest = digest_of(real)
    fake.routes[f"/v2/{REPO}/blobs/{digest}"] = serve(lie)
    status, body, complete = read_blob(faulty_cache, fake.ns, REPO, digest, timeout=30)
    assert status == 200
    assert not complete, "the client must see a broken stream, not a complete wrong body"
    assert len(body) < len(lie)
    assert_nothing_stored(faulty_cache, digest)
    failures = faulty_cache.metrics()
    assert failures[f'regcache_verification_failures_total{{reason="digest",registry="{fake.ns}"}}'] == 1
    # The next pull goes upstream again rather than serving anything from the failed one.
    read_blob(faulty_cache, fake.ns, REPO, digest, timeout=30)
    assert fake.count(f"/v2/{REPO}/blobs/{digest}") == 2


def test_short_body_is_not_stored(faulty_cache, fake):
    data = os.urandom(1024 * 1024)
    digest = digest_of(data)
    fake.routes[f"/v2/{REPO}/blobs/{digest}"] = truncate(data, keep=300_000)
    status, body, complete = read_blob(faulty_cache, fake.ns, REPO, digest, timeout=30)
    assert status == 200 and not complete
    assert body == data[: len(body)] and len(body) < len(data)
    assert_nothing_stored(faulty_cache, digest)


def test_dropped_connection_mid_body_is_not_stored(faulty_cache, fake):
    data = os.urandom(1024 * 1024)
    digest = digest_of(data)
    fake.routes[f"/v2/{REPO}/blobs/{digest}"] = drop_after(data, keep=500_000)
    status, body, complete = read_blob(faulty_cache, fake.ns, REPO, digest, timeout=30)
    assert status == 200 and not complete
    assert_nothing_stored(faulty_cache, digest)


def test_stalled_upstream_is_abandoned_after_the_idle_timeout(faulty_cache, fake):
    data = os.urandom(1024 * 1024)
    digest = digest_of(data)
    release = threading.Event()
    fake.routes[f"/v2/{REPO}/blobs/{digest}"] = stall_after(data, 200_000, release)
    started = time.monotonic()
    try:
        status, body, complete = read_blob(faulty_cache, fake.ns, REPO, digest, timeout=30)
    finally:
        release.set()
    elapsed = time.monotonic() - started
    assert status == 200 and not complete
    assert body == data[: len(body)]
    # Abandoned after the idle timeout, then resumed twice with a Range (test_resume), each
    # attempt stalling again: curl measures the idle time over a few seconds' average.
    assert fake.count(f"/v2/{REPO}/blobs/{digest}") == 3
    assert 1.5 < elapsed < 45, f"gave up after {elapsed:.1f}s with a 2s idle timeout and 2 resumes"
    assert_nothing_stored(faulty_cache, digest)


def test_connection_dropped_before_headers_is_a_502_naming_the_registry(faulty_cache, fake):
    digest = digest_of(b"never sent")
    fake.routes[f"/v2/{REPO}/blobs/{digest}"] = drop_before_headers()
    resp = faulty_cache.blob(fake.ns, REPO, digest)
    assert resp.status == 502
    error = json.loads(resp.body)["errors"][0]
    assert fake.ns in error["message"]
    assert_nothing_stored(faulty_cache, digest)


def test_unreachable_registry_is_a_502_naming_it(make_regcache):
    cache = make_regcache("--upstream", "gone.test=http://127.0.0.1:9")
    resp = cache.manifest("gone.test", REPO, "1.0")
    assert resp.status == 502
    assert resp.header("Content-Type").startswith("application/json")
    assert "gone.test" in json.loads(resp.body)["errors"][0]["message"]


def test_manifest_with_a_lying_docker_content_digest_is_refused(faulty_cache, fake):
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}).encode()
    wrong = digest_of(b"something else")
    fake.routes[f"/v2/{REPO}/manifests/1.0"] = serve(body, OCI_MANIFEST, Docker_Content_Digest=wrong)
    resp = faulty_cache.manifest(fake.ns, REPO, "1.0")
    assert resp.status == 502
    assert json.loads(resp.body)["errors"][0]["code"] == "DIGEST_INVALID"
    assert faulty_cache.stored_files("manifests") == [] and faulty_cache.stored_files("tags") == []


def test_manifest_by_digest_whose_body_differs_is_refused(faulty_cache, fake):
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}).encode()
    asked = digest_of(b"the manifest we asked for")
    fake.routes[f"/v2/{REPO}/manifests/{asked}"] = serve(body, OCI_MANIFEST)
    resp = faulty_cache.manifest(fake.ns, REPO, asked)
    assert resp.status == 502
    assert faulty_cache.stored_files("manifests") == []


def test_manifest_over_4_mib_is_refused(faulty_cache, fake):
    body = b'{"schemaVersion": 2, "pad": "' + b"x" * (4 * 1024 * 1024) + b'"}'
    fake.routes[f"/v2/{REPO}/manifests/huge"] = serve(body, OCI_MANIFEST)
    resp = faulty_cache.manifest(fake.ns, REPO, "huge")
    assert resp.status == 502
    assert "exceeds" in json.loads(resp.body)["errors"][0]["message"]
    assert faulty_cache.stored_files("manifests") == []


def test_upstream_refusals_pass_through_unchanged(faulty_cache, fake):
    challenge = 'Bearer realm="http://127.0.0.1:1/token",service="fake"'
    fake.routes[f"/v2/{REPO}/manifests/locked"] = lambda h: h.send_json(
        401, b'{"errors":[{"code":"UNAUTHORIZED","message":"auth"}]}', {"WWW-Authenticate": challenge}
    )
    fake.routes[f"/v2/{REPO}/manifests/limited"] = lambda h: h.send_json(
        429, b'{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}', {"Retry-After": "30"}
    )
    fake.routes[f"/v2/{REPO}/manifests/broken"] = lambda h: h.send_json(503, b'{"errors":[]}')
    locked = faulty_cache.manifest(fake.ns, REPO, "locked")
    assert locked.status == 401 and locked.header("WWW-Authenticate") == challenge
    # 429 and 5xx become 503 (test_freshness): containerd would retry a 429 on the mirror.
    limited = faulty_cache.manifest(fake.ns, REPO, "limited")
    assert limited.status == 503 and limited.header("Retry-After") is None
    assert json.loads(limited.body)["errors"][0]["detail"] == {"upstream_status": 429, "retry_after": "30"}
    assert faulty_cache.manifest(fake.ns, REPO, "broken").status == 503
    assert faulty_cache.stored_files("manifests") == [] and faulty_cache.stored_files("tags") == []


def test_manifest_requests_ask_for_identity_encoding(faulty_cache, fake):
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}).encode()
    fake.routes[f"/v2/{REPO}/manifests/1.0"] = serve(body, OCI_MANIFEST)
    resp = faulty_cache.manifest(fake.ns, REPO, "1.0", Accept_Encoding="zstd, gzip")
    assert resp.status == 200 and resp.body == body
    [seen] = [s for s in fake.seen if s.path.endswith("/manifests/1.0")]
    assert seen.headers.get("Accept-Encoding", "identity") == "identity"


def test_a_range_of_an_unverified_download_never_completes(faulty_cache, fake):
    """Lazy-pulling snapshotters read ranges in the middle of a layer while it downloads."""
    real = os.urandom(8 * 1024 * 1024)
    corrupt = bytearray(real)
    corrupt[5000] ^= 0xFF  # one flipped byte in the middle, under the good digest
    digest = digest_of(real)
    fake.routes[f"/v2/{REPO}/blobs/{digest}"] = serve_throttled(bytes(corrupt), seconds=1.5, pieces=30)
    first = threading.Thread(target=read_blob, args=(faulty_cache, fake.ns, REPO, digest, None, 30), daemon=True)
    first.start()
    assert wait_until(lambda: faulty_cache.metrics().get("regcache_fills_in_flight") == 1, timeout=5)
    status, body, complete = read_blob(faulty_cache, fake.ns, REPO, digest, {"Range": "bytes=4990-5009"}, timeout=30)
    first.join(10)
    assert status == 206
    assert not complete, "a ranged answer of unverified bytes must not look complete"
    assert len(body) < 20
    assert_nothing_stored(faulty_cache, digest)


def test_an_interim_1xx_answer_is_not_taken_for_the_answer(faulty_cache, fake):
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}).encode()

    def early_hints(h):
        h.wfile.write(b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n")
        serve(body, OCI_MANIFEST)(h)

    fake.routes[f"/v2/{REPO}/manifests/1.0"] = early_hints
    resp = faulty_cache.manifest(fake.ns, REPO, "1.0")
    assert resp.status == 200 and resp.body == body


def test_an_error_answer_goes_only_to_the_request_it_answered(faulty_cache, fake):
    """Two repositories share a layer: a 401 for one must not reach a client of the other."""
    data = os.urandom(512 * 1024)
    digest = digest_of(data)
    challenge = 'Bearer realm="http://127.0.0.1:1/token",scope="repository:locked/app:pull"'

    def slow_401(h):
        time.sleep(0.8)
        h.send_json(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"auth"}]}', {"WWW-Authenticate": challenge})

    fake.routes[f"/v2/locked/app/blobs/{digest}"] = slow_401
    fake.routes[f"/v2/open/app/blobs/{digest}"] = serve(data)
    locked: dict[str, object] = {}
    thread = threading.Thread(
        target=lambda: locked.update(resp=faulty_cache.get(f"/v2/locked/app/blobs/{digest}", fake.ns)), daemon=True
    )
    thread.start()
    assert wait_until(lambda: fake.count(f"/v2/locked/app/blobs/{digest}") == 1, timeout=5)
    opened = faulty_cache.get(f"/v2/open/app/blobs/{digest}", fake.ns)
    thread.join(10)
    assert opened.status == 200 and opened.body == data
    assert locked["resp"].status == 401 and locked["resp"].header("WWW-Authenticate") == challenge


def test_a_tag_fetched_for_a_client_that_takes_no_index_is_not_served_to_others(faulty_cache, fake):
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []})
    single = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []})

    def by_accept(h):
        # What registries do: the index for clients that take it, else the platform's manifest.
        if "index" in h.headers.get("Accept", ""):
            serve(index.encode(), "application/vnd.oci.image.index.v1+json")(h)
        else:
            serve(single.encode(), OCI_MANIFEST)(h)

    fake.routes[f"/v2/{REPO}/manifests/multi"] = by_accept
    narrow = faulty_cache.manifest(fake.ns, REPO, "multi", accept=OCI_MANIFEST)
    assert narrow.body == single.encode()
    containerd_like = faulty_cache.manifest(fake.ns, REPO, "multi")  # takes indexes and */*
    assert containerd_like.body == index.encode()
    assert faulty_cache.manifest(fake.ns, REPO, "multi").body == index.encode()
    assert fake.count(f"/v2/{REPO}/manifests/multi") == 2


def test_headers_reach_the_client_before_a_slow_body(faulty_cache, fake):
    """containerd gives a mirror 30 s for its headers; a slow layer must not eat into them."""
    data = os.urandom(1024 * 1024)
    digest = digest_of(data)
    release = threading.Event()
    fake.routes[f"/v2/{REPO}/blobs/{digest}"] = stall_after(data, 1000, release)
    conn = http.client.HTTPConnection("127.0.0.1", faulty_cache.port, timeout=30)
    started = time.monotonic()
    try:
        conn.request("GET", f"/v2/{REPO}/blobs/{digest}?ns={urllib.parse.quote(fake.ns)}")
        resp = conn.getresponse()
        waited = time.monotonic() - started
        assert resp.status == 200 and resp.getheader("Content-Length") == str(len(data))
        assert waited < 1.0, f"headers took {waited:.1f}s while the body stalled"
    finally:
        release.set()
        conn.close()
