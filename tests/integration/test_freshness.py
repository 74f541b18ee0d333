"""Keep pulls working through upstream trouble: tags revalidated with a HEAD after --tag-ttl and
served stale while the registry cannot answer; rate limits and outages on uncached content
answered so that containerd goes to the registry itself instead of retrying the mirror."""

from __future__ import annotations

import json
import threading
import time

import pytest

from tests.conftest import Upstream
from tests.fakes import FakeHandler, digest_of, drop_before_headers, serve
from tests.peers.images import push
from tests.support import log_lines, wait_until

REPO = "fresh/app"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
TTL = 1.0


def manifest(version: int) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [], "v": version}).encode()


def serve_manifest(body: bytes):
    return serve(body, OCI_MANIFEST, Docker_Content_Digest=digest_of(body))


def error(status: int, **headers: str):
    def behaviour(h: FakeHandler) -> None:
        h.send_json(status, b'{"errors":[{"code":"X","message":"upstream says no"}]}', headers)

    return behaviour


def stalled(release: threading.Event):
    def behaviour(h: FakeHandler) -> None:
        release.wait(30)
        h.close_connection = True

    return behaviour


@pytest.fixture
def ttl_cache(make_regcache, fake):
    return make_regcache(*fake.upstream_arg(), "--tag-ttl", f"{TTL}s", "--upstream-idle-timeout", "1")


def stale_count(cache, ns: str) -> float:
    return cache.metrics().get(f'regcache_stale_served_total{{kind="tag",registry="{ns}"}}', 0.0)


@pytest.mark.parametrize(
    "status, headers",
    [(429, {"Retry-After": "30"}), (500, {}), (502, {}), (503, {"Retry-After": "120"}), (504, {})],
)
def test_rate_limits_and_outages_on_uncached_content_are_503_with_retry_after_in_the_body(
    ttl_cache, fake, status, headers
):
    blob = digest_of(b"never served")
    fake.routes[f"/v2/{REPO}/manifests/1.0"] = error(status, **headers)
    fake.routes[f"/v2/{REPO}/blobs/{blob}"] = error(status, **headers)
    for resp in (
        ttl_cache.manifest(fake.ns, REPO, "1.0"),
        ttl_cache.manifest(fake.ns, REPO, "1.0", method="HEAD"),
        ttl_cache.blob(fake.ns, REPO, blob),
        ttl_cache.blob(fake.ns, REPO, blob, method="HEAD"),
    ):
        assert resp.status == 503
        # A Retry-After header would make a client wait on the mirror; the body carries it.
        assert resp.header("Retry-After") is None
        if resp.body:
            [entry] = json.loads(resp.body)["errors"]
            assert entry["code"] == "UNAVAILABLE" and fake.ns in entry["message"]
            assert entry["detail"]["upstream_status"] == status
            assert entry["detail"].get("retry_after") == headers.get("Retry-After")
    assert ttl_cache.stored_files("manifests") == [] and ttl_cache.stored_files("tags") == []


@pytest.mark.parametrize("status", [401, 403, 404])
def test_refusals_on_uncached_content_pass_through_unchanged(ttl_cache, fake, status):
    headers = {"WWW-Authenticate": 'Bearer realm="http://127.0.0.1:1/token"'} if status == 401 else {}
    fake.routes[f"/v2/{REPO}/manifests/1.0"] = error(status, **headers)
    resp = ttl_cache.manifest(fake.ns, REPO, "1.0")
    assert resp.status == status and b"upstream says no" in resp.body
    assert resp.header("WWW-Authenticate") == headers.get("WWW-Authenticate")


def test_a_tag_is_served_from_the_cache_for_its_ttl_then_revalidated_with_a_head(ttl_cache, fake):
    path = f"/v2/{REPO}/manifests/1.0"
    fake.routes[path] = serve_manifest(manifest(1))
    assert ttl_cache.manifest(fake.ns, REPO, "1.0").body == manifest(1)
    assert ttl_cache.manifest(fake.ns, REPO, "1.0").body == manifest(1)
    assert (fake.count(path, "GET"), fake.count(path, "HEAD")) == (1, 0), "within the TTL: no upstream request"
    time.sleep(TTL + 0.2)
    again = ttl_cache.manifest(fake.ns, REPO, "1.0")
    assert again.status == 200 and again.body == manifest(1)
    # Revalidated with a HEAD (Docker Hub does not count those as pulls), not fetched again.
    assert (fake.count(path, "GET"), fake.count(path, "HEAD")) == (1, 1)
    assert ttl_cache.manifest(fake.ns, REPO, "1.0").body == manifest(1)
    assert fake.count(path, "HEAD") == 1, "the revalidation restarts the TTL"
    # By digest: immutable, never revalidated however old.
    time.sleep(TTL + 0.2)
    by_digest = digest_of(manifest(1))
    assert ttl_cache.manifest(fake.ns, REPO, by_digest).body == manifest(1)
    assert fake.seen[-1].path == path, "a manifest by digest went upstream"


def test_a_moved_tag_is_fetched_again_once_its_ttl_is_over(ttl_cache, fake):
    path = f"/v2/{REPO}/manifests/1.0"
    fake.routes[path] = serve_manifest(manifest(1))
    assert ttl_cache.manifest(fake.ns, REPO, "1.0").body == manifest(1)
    fake.routes[path] = serve_manifest(manifest(2))
    assert ttl_cache.manifest(fake.ns, REPO, "1.0").body == manifest(1), "within the TTL the stored tag wins"
    time.sleep(TTL + 0.2)
    moved = ttl_cache.manifest(fake.ns, REPO, "1.0")
    assert moved.body == manifest(2) and moved.header("Docker-Content-Digest") == digest_of(manifest(2))
    assert (fake.count(path, "GET"), fake.count(path, "HEAD")) == (2, 1)
    assert ttl_cache.manifest(fake.ns, REPO, "1.0").body == manifest(2)
    assert fake.count(path, "GET") == 2


FAILURES = {
    "503": lambda release: error(503, **{"Retry-After": "60"}),
    "429": lambda release: error(429, **{"Retry-After": "60"}),
    "500": lambda release: error(500),
    "connection dropped": lambda release: drop_before_headers(),
    "no answer (idle timeout)": stalled,
}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_a_stale_tag_is_served_while_the_registry_cannot_revalidate_it(ttl_cache, fake, failure):
    path = f"/v2/{REPO}/manifests/1.0"
    fake.routes[path] = serve_manifest(manifest(1))
    assert ttl_cache.manifest(fake.ns, REPO, "1.0").body == manifest(1)
    release = threading.Event()
    fake.routes[path] = FAILURES[failure](release)
    time.sleep(TTL + 0.2)
    try:
        for method in ("GET", "HEAD"):
            resp = ttl_cache.manifest(fake.ns, REPO, "1.0", method=method)
            assert resp.status == 200
            assert resp.header("Docker-Content-Digest") == digest_of(manifest(1))
            if method == "GET":
                assert resp.body == manifest(1)
    finally:
        release.set()
    assert stale_count(ttl_cache, fake.ns) == 2
    assert wait_until(lambda: log_lines(ttl_cache.log(), r"WARNING .*tag .*fresh/app:1.0.*serving the stored"))
    # Once the registry answers again, the tag is revalidated and served fresh.
    fake.routes[path] = serve_manifest(manifest(1))
    assert ttl_cache.manifest(fake.ns, REPO, "1.0").body == manifest(1)
    assert stale_count(ttl_cache, fake.ns) == 2


def test_a_stale_tag_is_served_when_its_new_manifest_cannot_be_fetched(ttl_cache, fake):
    path = f"/v2/{REPO}/manifests/1.0"
    fake.routes[path] = serve_manifest(manifest(1))
    assert ttl_cache.manifest(fake.ns, REPO, "1.0").body == manifest(1)

    def moved_but_broken(h: FakeHandler) -> None:
        # The HEAD says the tag moved; the GET of the new manifest fails.
        if h.command == "HEAD":
            serve_manifest(manifest(2))(h)
        else:
            error(502)(h)

    fake.routes[path] = moved_but_broken
    time.sleep(TTL + 0.2)
    resp = ttl_cache.manifest(fake.ns, REPO, "1.0")
    assert resp.status == 200 and resp.body == manifest(1)
    assert stale_count(ttl_cache, fake.ns) == 1


def test_refusals_during_revalidation_reach_the_client(ttl_cache, fake):
    path = f"/v2/{REPO}/manifests/1.0"
    fake.routes[path] = serve_manifest(manifest(1))
    assert ttl_cache.manifest(fake.ns, REPO, "1.0").body == manifest(1)
    fake.routes[path] = error(404)
    time.sleep(TTL + 0.2)
    # The registry says the tag is gone: that is an answer, not an outage.
    assert ttl_cache.manifest(fake.ns, REPO, "1.0").status == 404
    assert stale_count(ttl_cache, fake.ns) == 0


def test_skip_tags_are_never_stored_so_never_served_stale(ttl_cache, fake):
    path = f"/v2/{REPO}/manifests/latest"
    fake.routes[path] = serve_manifest(manifest(1))
    assert ttl_cache.manifest(fake.ns, REPO, "latest").body == manifest(1)
    fake.routes[path] = error(503)
    assert ttl_cache.manifest(fake.ns, REPO, "latest").status == 503
    assert stale_count(ttl_cache, fake.ns) == 0


def test_a_tag_moved_in_a_real_registry_and_served_stale_while_it_is_down(make_regcache, upstream: Upstream):
    """distribution as the upstream: skopeo moves a tag; the registry is stopped."""
    repo = "test/moving"
    push(upstream.app, f"{upstream.ns}/{repo}:v")
    cache = make_regcache(*upstream.upstream_arg(), "--tag-ttl", f"{TTL}s")
    assert cache.manifest(upstream.ns, repo, "v").body == upstream.app.manifest_bytes
    push(upstream.app2, f"{upstream.ns}/{repo}:v")
    assert cache.manifest(upstream.ns, repo, "v").body == upstream.app.manifest_bytes
    time.sleep(TTL + 0.2)
    gets_before = upstream.registry.manifest_get_count("v")
    moved = cache.manifest(upstream.ns, repo, "v")
    assert moved.body == upstream.app2.manifest_bytes
    heads = [e for e in upstream.registry.requests() if e.method == "HEAD" and e.path == f"/v2/{repo}/manifests/v"]
    assert len(heads) == 1 and upstream.registry.manifest_get_count("v") == gets_before + 1
    time.sleep(TTL + 0.2)
    upstream.registry.stop()
    try:
        stale = cache.manifest(upstream.ns, repo, "v")
        assert stale.status == 200 and stale.body == upstream.app2.manifest_bytes
        assert stale_count(cache, upstream.ns) == 1
        # Uncached content needs the registry: a 502 (unreachable) sends containerd there.
        assert cache.manifest(upstream.ns, repo, "other").status == 502
    finally:
        upstream.registry.start()
