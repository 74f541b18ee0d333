"""Clients that send no `ns` pull through regcache by in-path registry: skopeo by reference, and
podman through a registries.conf mirror while the origin's name does not even resolve."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, Upstream
from tests.peers.binaries import require
from tests.peers.images import push
from tests.peers.net import clean_env
from tests.peers.podman import Mirror, Podman
from tests.support import ROOT, Regcache, log_lines, request, stored_blob

# Reserved for tests (RFC 2606): never resolves, so only the mirror can serve it.
ORIGIN = "origin.test"
CRIO_DROP_IN = ROOT / "conf" / "crio" / "registries.conf.d" / "regcache.conf"


@pytest.fixture
def origin_cache(make_regcache, upstream: Upstream) -> Regcache:
    """regcache knowing the test registry by a registry name, as an operator names a registry on a port."""
    return make_regcache("--upstream", f"{ORIGIN}={upstream.registry.url}")


@pytest.fixture(scope="module")
def podman() -> Iterator[Podman]:
    client = Podman()
    yield client
    client.close()


def skopeo_copy(source: str, dest: Path, scratch: Path) -> subprocess.CompletedProcess[str]:
    argv = [require("skopeo"), "--insecure-policy", "copy", "--src-tls-verify=false", source, f"dir:{dest}"]
    env = clean_env(HOME=str(scratch), XDG_RUNTIME_DIR=str(scratch))
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)


def path_requests(cache: Regcache) -> list[str]:
    return log_lines(cache.log(), rf"regcache\.access: \S+ /v2/{ORIGIN}/{REPO}/")


def test_skopeo_copies_an_image_by_in_path_reference(origin_cache, upstream, scratch):
    app = upstream.app
    dest = scratch / "copied"
    done = skopeo_copy(f"docker://127.0.0.1:{origin_cache.port}/{ORIGIN}/{REPO}:1.0", dest, scratch)
    assert done.returncode == 0, done.stdout + done.stderr
    # The image arrived byte for byte, and every part of it went through the cache by path.
    assert (dest / "manifest.json").read_bytes() == app.manifest_bytes
    for digest in app.blob_digests:
        assert (dest / digest.split(":", 1)[1]).read_bytes() == app.blob(digest)
        assert stored_blob(origin_cache.cache_dir, digest) == app.blob(digest)
    lines = path_requests(origin_cache)
    assert len(lines) == 1 + len(app.blob_digests) and all(f"ns={ORIGIN} status=200" in line for line in lines)
    assert origin_cache.cache_count("miss") == 1 + len(app.blob_digests)


def test_skopeo_lists_tags_through_the_cache_and_from_it_with_the_registry_stopped(origin_cache, upstream, scratch):
    push(upstream.app, f"{upstream.ns}/{REPO}:1.1")
    argv = [
        require("skopeo"),
        "list-tags",
        "--tls-verify=false",
        f"docker://127.0.0.1:{origin_cache.port}/{ORIGIN}/{REPO}",
    ]
    env = clean_env(HOME=str(scratch), XDG_RUNTIME_DIR=str(scratch))

    def list_tags() -> list[str]:
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        return sorted(json.loads(done.stdout)["Tags"])

    fresh = list_tags()
    assert {"1.0", "1.1"} <= set(fresh)
    assert log_lines(origin_cache.log(), rf"GET /v2/{ORIGIN}/{REPO}/tags/list ns={ORIGIN} status=200")
    upstream.registry.stop()
    try:
        assert list_tags() == fresh, "the kept list, while the registry is down"
    finally:
        upstream.registry.start()


def test_podman_pulls_through_a_registries_conf_mirror_and_again_with_the_upstream_stopped(
    podman, origin_cache, upstream
):
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo(ORIGIN, 443)
    podman.configure([Mirror(ORIGIN, f"127.0.0.1:{origin_cache.port}/{ORIGIN}")])
    ref = f"{ORIGIN}/{REPO}:1.0"
    config_hex = upstream.app.config_digest.split(":", 1)[1]
    podman.pull(ref)
    assert podman.image_ids().get(ref) == config_hex
    assert path_requests(origin_cache), "podman did not go through the mirror"
    for digest in upstream.app.blob_digests:
        assert stored_blob(origin_cache.cache_dir, digest) == upstream.app.blob(digest)

    podman.remove_image(ref)
    assert ref not in podman.image_ids()
    hits_before = origin_cache.cache_count("hit")
    upstream.registry.stop()
    try:
        podman.pull(ref)
    finally:
        upstream.registry.start()
    assert podman.image_ids().get(ref) == config_hex
    # The tag, the config and every layer: from the cache, the registry being down.
    assert origin_cache.cache_count("hit") - hits_before >= 1 + len(upstream.app.blob_digests)
    podman.remove_image(ref)


def test_the_shipped_cri_o_drop_in_works_as_written(podman, make_regcache, upstream):
    """conf/crio's file, only regcache's address changed: docker.io (here the test registry,
    through --upstream) is pulled through the mirror by in-path registry."""
    push(upstream.app, f"{upstream.ns}/library/hello:1.0")
    cache = make_regcache("--upstream", f"docker.io={upstream.registry.url}")
    text = CRIO_DROP_IN.read_text()
    assert "regcache.example.internal:3000" in text
    podman.registries_conf.write_text(text.replace("regcache.example.internal:3000", f"127.0.0.1:{cache.port}"))
    ref = "docker.io/library/hello:1.0"
    podman.pull(ref)
    assert podman.image_ids().get(ref) == upstream.app.config_digest.split(":", 1)[1]
    lines = log_lines(cache.log(), r"regcache\.access: GET /v2/docker\.io/library/hello/manifests/1\.0 ns=docker\.io")
    assert lines and cache.cache_count("miss") >= 1
    podman.remove_image(ref)


def test_a_tls_handshake_on_the_plain_http_port_is_refused_at_once(origin_cache):
    """containers/image tries https:// first on an insecure mirror: it must fail fast (then it
    turns to http://), not wait for its 10-second TLS handshake timeout on every pull."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", origin_cache.port), timeout=20) as raw:
        # A hang would end in TimeoutError, which is neither of these.
        with pytest.raises((ssl.SSLError, ConnectionError)):
            context.wrap_socket(raw, server_hostname="cache")
    assert json.loads(request(f"{origin_cache.url}/v2/").body) == {}
