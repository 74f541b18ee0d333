"""Pulls that name their registry first in the path (/v2/<registry>/<repository>/...), the
OCI-Namespace header, and --skip-repos: all against the real test registry.

The test registry is known to regcache under two names, its address (`ns`, as containerd names
it) and `origin.test` (an --upstream name, as CRI-O and podman name it in the path), so the same
content can be pulled both ways.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest

from tests.conftest import REPO, Upstream
from tests.peers.images import build_image, make_layer, push
from tests.peers.registry import Registry
from tests.support import ALL_MANIFEST_TYPES, Regcache, Response, request, stored_blob

ORIGIN = "origin.test"
DOCKER_UA = "docker/27.0.1 go/go1.22"


def by_path(cache: Regcache, path: str, method: str = "GET", **headers: str) -> Response:
    sent = {"Accept": ALL_MANIFEST_TYPES, **{k.replace("_", "-"): v for k, v in headers.items()}}
    return request(f"{cache.url}/v2/{path}", method=method, headers=sent)


def error_message(resp: Response) -> str:
    return json.loads(resp.body)["errors"][0]["message"]


@pytest.fixture
def both_names(make_regcache: Callable[..., Regcache], upstream: Upstream) -> Regcache:
    return make_regcache(*upstream.upstream_arg(), "--upstream", f"{ORIGIN}={upstream.registry.url}")


def test_manifest_and_blobs_by_in_path_registry_cold_then_warm(both_names, upstream):
    app = upstream.app
    cold = by_path(both_names, f"{ORIGIN}/{REPO}/manifests/1.0")
    assert (cold.status, cold.body) == (200, app.manifest_bytes)
    assert cold.header("Docker-Content-Digest") == app.manifest_digest
    assert cold.header("OCI-Namespace") == ORIGIN
    for digest in app.blob_digests:
        blob = by_path(both_names, f"{ORIGIN}/{REPO}/blobs/{digest}")
        assert (blob.status, blob.body) == (200, app.blob(digest))
        assert stored_blob(both_names.cache_dir, digest) == app.blob(digest)
    before = upstream.registry.manifest_get_count("1.0")
    warm = by_path(both_names, f"{ORIGIN}/{REPO}/manifests/1.0")
    assert (warm.status, warm.body) == (200, app.manifest_bytes)
    assert upstream.registry.manifest_get_count("1.0") == before
    assert both_names.cache_count("miss") == 1 + len(app.blob_digests) and both_names.cache_count("hit") == 1
    # Logged and labelled by the registry's name, as an ns would be; the upstream got the bare repository.
    assert re.search(rf"GET /v2/{ORIGIN}/{REPO}/manifests/1.0 ns={ORIGIN} status=200", both_names.log())
    assert both_names.metrics().get(f'regcache_upstream_requests_total{{registry="{ORIGIN}",status="200"}}', 0) >= 1
    assert ("GET", f"/v2/{REPO}/manifests/1.0", 200) in upstream.registry.request_log()


def test_blobs_are_shared_between_path_and_ns_pulls(both_names, upstream):
    digest = upstream.app.layer_digests[1]
    assert by_path(both_names, f"{ORIGIN}/{REPO}/blobs/{digest}").status == 200
    gets = upstream.registry.blob_get_count(digest)
    by_ns = both_names.blob(upstream.ns, REPO, digest)
    assert (by_ns.status, by_ns.body) == (200, upstream.app.blob(digest))
    assert upstream.registry.blob_get_count(digest) == gets
    assert both_names.cache_count("hit") == 1


def test_ns_wins_over_a_registry_in_the_path(both_names, upstream):
    resp = both_names.get(f"/v2/{ORIGIN}/{REPO}/manifests/1.0", upstream.ns, headers={"Accept": ALL_MANIFEST_TYPES})
    # The whole path is the repository in the registry ns names: the registry has no such one.
    assert resp.status == 404
    assert resp.header("OCI-Namespace") == upstream.ns
    assert ("GET", f"/v2/{ORIGIN}/{REPO}/manifests/1.0", 404) in upstream.registry.request_log()


def test_docker_io_one_component_names_are_library_images(make_regcache, upstream):
    push(upstream.app, f"{upstream.ns}/library/hello:1.0")
    cache = make_regcache("--upstream", f"docker.io={upstream.registry.url}")
    for name in ("docker.io/hello", "docker.io/library/hello"):
        resp = by_path(cache, f"{name}/manifests/1.0")
        assert (resp.status, resp.body) == (200, upstream.app.manifest_bytes), name
        assert resp.header("OCI-Namespace") == "docker.io"
    assert cache.cache_count("hit") == 1, "both names are one repository: the second was a hit"
    # Docker's registry-mirrors (no ns, no registry in the path) still mean Docker Hub, unscoped.
    docker = by_path(cache, "library/hello/manifests/1.0", User_Agent=DOCKER_UA)
    assert (docker.status, docker.body) == (200, upstream.app.manifest_bytes)
    assert docker.header("OCI-Namespace") is None


@pytest.mark.parametrize("path", [f"{REPO}/manifests/1.0", "team/app/blobs/sha256:" + "a" * 64, "alpine/manifests/3"])
def test_no_registry_named_is_a_400_that_names_both_ways(both_names, path):
    resp = by_path(both_names, path)
    assert resp.status == 400
    message = error_message(resp)
    assert "?ns=<registry>" in message and "hosts.toml" in message
    assert "/v2/<registry>/<repository>" in message and "registries.conf" in message
    assert resp.header("OCI-Namespace") is None


def test_oci_namespace_on_every_answer_after_routing(both_names, upstream):
    app = upstream.app
    answers = {
        "ns GET": both_names.manifest(upstream.ns, REPO, "1.0"),
        "path HEAD manifest": by_path(both_names, f"{ORIGIN}/{REPO}/manifests/1.0", "HEAD"),
        "path HEAD blob": by_path(both_names, f"{ORIGIN}/{REPO}/blobs/{app.config_digest}", "HEAD"),
        "path 404 passed through": by_path(both_names, f"{ORIGIN}/{REPO}/manifests/no-such-tag"),
        "path bad tag": by_path(both_names, f"{ORIGIN}/{REPO}/manifests/.bad"),
        "path skipped tag": by_path(both_names, f"{ORIGIN}/{REPO}/manifests/latest"),
    }
    statuses = {what: resp.status for what, resp in answers.items()}
    assert statuses == {
        "ns GET": 200,
        "path HEAD manifest": 200,
        "path HEAD blob": 200,
        "path 404 passed through": 404,
        "path bad tag": 400,
        "path skipped tag": 200,
    }
    expected = {what: (upstream.ns if what.startswith("ns") else ORIGIN) for what in answers}
    assert {what: resp.header("OCI-Namespace") for what, resp in answers.items()} == expected
    assert request(f"{both_names.url}/v2/").header("OCI-Namespace") is None


def test_allow_registry_and_the_ssrf_guard_apply_to_path_registries(make_regcache, upstream):
    cache = make_regcache("--upstream", f"{ORIGIN}={upstream.registry.url}", "--allow-registry", "*.test")
    assert by_path(cache, f"{ORIGIN}/{REPO}/manifests/1.0").status == 200
    refused = by_path(cache, f"ghcr.io/{REPO}/manifests/1.0")
    assert refused.status == 403 and "--allow-registry" in error_message(refused)
    assert refused.header("OCI-Namespace") == "ghcr.io"
    open_cache = make_regcache()
    for address in ("169.254.169.254", "127.0.0.1"):
        resp = by_path(open_cache, f"{address}/latest/manifests/1.0")
        assert resp.status == 403 and "IP address" in error_message(resp), address


def test_private_registry_by_path(make_regcache, upstream):
    cache = make_regcache("--upstream", f"{ORIGIN}={upstream.registry.url}", "--private-registry", ORIGIN)
    for _ in range(2):
        assert by_path(cache, f"{ORIGIN}/{REPO}/manifests/1.0").body == upstream.app.manifest_bytes
    digest = upstream.app.config_digest
    assert by_path(cache, f"{ORIGIN}/{REPO}/blobs/{digest}").status == 200
    assert stored_blob(cache.cache_dir / "private" / ORIGIN, digest) == upstream.app.config_bytes
    assert not cache.stored_files("manifests") and not cache.stored_files("tags")


def test_creds_file_entries_apply_to_path_registries(make_regcache, tmp_path):
    user, password = "pathuser", "path-pw-7f3e91"
    registry = Registry(tmp_path / "basic", htpasswd=(user, password)).start()
    try:
        image = build_image(tmp_path / "layout", [make_layer({"a.txt": b"private\n"})], "1")
        push(image, f"{registry.host}/team/app:1", creds=(user, password))
        creds = tmp_path / "creds.yaml"
        creds.write_text(json.dumps({"secure.test": {"username": user, "password": password}}))
        creds.chmod(0o600)
        without = make_regcache("--upstream", f"secure.test={registry.url}")
        assert by_path(without, "secure.test/team/app/manifests/1").status == 401
        cache = make_regcache("--upstream", f"secure.test={registry.url}", "--creds-file", str(creds))
        resp = by_path(cache, "secure.test/team/app/manifests/1")
        assert (resp.status, resp.body) == (200, image.manifest_bytes)
    finally:
        registry.close()


def test_skip_repos_streams_and_never_stores(make_regcache, upstream):
    app = upstream.app
    cache = make_regcache(
        *upstream.upstream_arg(), "--upstream", f"{ORIGIN}={upstream.registry.url}", "--skip-repos", rf"^{ORIGIN}/test/"
    )
    gets = upstream.registry.manifest_get_count("1.0")
    blob_gets = upstream.registry.blob_get_count(app.config_digest)
    for _ in range(2):
        manifest = by_path(cache, f"{ORIGIN}/{REPO}/manifests/1.0")
        assert (manifest.status, manifest.body) == (200, app.manifest_bytes)
        for digest in app.blob_digests:
            blob = by_path(cache, f"{ORIGIN}/{REPO}/blobs/{digest}")
            assert (blob.status, blob.body) == (200, app.blob(digest))
            assert blob.header("Docker-Content-Digest") == digest
        head = by_path(cache, f"{ORIGIN}/{REPO}/blobs/{app.config_digest}", "HEAD")
        assert head.status == 200 and int(head.header("Content-Length")) == len(app.config_bytes)
    assert upstream.registry.manifest_get_count("1.0") == gets + 2, "a skipped repository is always fetched"
    assert upstream.registry.blob_get_count(app.config_digest) == blob_gets + 2
    assert not (cache.stored_files("blobs") + cache.stored_files("manifests") + cache.stored_files("tags"))
    assert not cache.staging_files()
    assert cache.cache_count("skip") == 2 * (2 + len(app.blob_digests))
    assert cache.cache_count("hit") == cache.cache_count("miss") == 0
    # containerd 2.1's parallel chunks: an open-ended range gets its 206 from the registry's bytes.
    layer = app.blob_digests[-1]
    chunk = by_path(cache, f"{ORIGIN}/{REPO}/blobs/{layer}", Range="bytes=7-")
    assert chunk.status == 206 and chunk.body == app.blob(layer)[7:]
    assert chunk.header("Content-Range") == f"bytes 7-{len(app.blob(layer)) - 1}/{len(app.blob(layer))}"
    assert not cache.stored_files("blobs")
    # The same repository under the registry's other name does not match: stored as usual.
    assert cache.blob(upstream.ns, REPO, app.config_digest).status == 200
    assert stored_blob(cache.cache_dir, app.config_digest) == app.config_bytes
