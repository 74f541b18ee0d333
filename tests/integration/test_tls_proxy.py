"""HTTPS upstreams and forward proxies: `--upstream-ca` trusts a private CA, an untrusted
certificate is a 502 that names the registry, and HTTPS_PROXY/https_proxy/NO_PROXY in
regcache's environment decide whether upstream traffic goes through the proxy."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.peers.images import Image, build_image, make_layer, push, random_layer
from tests.peers.net import free_port
from tests.peers.registry import Registry
from tests.peers.tinyproxy import Tinyproxy
from tests.peers.tls import make_ca_and_cert
from tests.support import Regcache, stored_blob

REPO = "tls/app"


@dataclass
class TlsUpstream:
    registry: Registry
    ca: Path
    image: Image

    @property
    def ns(self) -> str:
        return self.registry.host

    def upstream_arg(self) -> list[str]:
        assert self.registry.url.startswith("https://")
        return ["--upstream", f"{self.ns}={self.registry.url}"]


@pytest.fixture(scope="module")
def tls_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsUpstream]:
    layers = [make_layer({"etc/tls.txt": b"over TLS\n"}), random_layer(512 * 1024, seed=72)]
    image = build_image(tmp_path_factory.mktemp("tls-layout"), layers, "1.0")
    ca, cert, key = make_ca_and_cert(tmp_path_factory.mktemp("pki"))
    registry = Registry(tmp_path_factory.mktemp("tls-registry"), tls=(cert, key))
    try:
        registry.start()
        push(image, f"{registry.host}/{REPO}:{image.tag}")
        yield TlsUpstream(registry, ca, image)
    finally:
        registry.close()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tinyproxy]:
    with Tinyproxy(tmp_path_factory.mktemp("tinyproxy")) as running:
        yield running


def pull_all(cache: Regcache, up: TlsUpstream) -> None:
    """Manifest by tag and every blob, each checked byte for byte, and stored."""
    image = up.image
    manifest = cache.manifest(up.ns, REPO, image.tag)
    assert manifest.status == 200, manifest.body
    assert manifest.body == image.manifest_bytes
    assert manifest.header("Docker-Content-Digest") == image.manifest_digest
    for digest in image.blob_digests:
        blob = cache.blob(up.ns, REPO, digest)
        assert blob.status == 200, blob.body
        assert blob.body == image.blob(digest)
        assert stored_blob(cache.cache_dir, digest) == image.blob(digest)


def stored_objects(cache: Regcache) -> list[Path]:
    return cache.stored_files("blobs") + cache.stored_files("manifests") + cache.stored_files("tags")


def connects_to(proxy: Tinyproxy, host: str) -> int:
    return proxy.connect_targets().count(host)


def test_https_upstream_trusted_with_upstream_ca(make_regcache, tls_upstream):
    cache = make_regcache(*tls_upstream.upstream_arg(), "--upstream-ca", str(tls_upstream.ca))
    pull_all(cache, tls_upstream)
    gets = tls_upstream.registry.manifest_get_count(tls_upstream.image.tag)
    assert cache.manifest(tls_upstream.ns, REPO, tls_upstream.image.tag).body == tls_upstream.image.manifest_bytes
    assert tls_upstream.registry.manifest_get_count(tls_upstream.image.tag) == gets, "a warm tag went upstream"


def test_https_upstream_with_untrusted_certificate_is_a_502_naming_the_registry(make_regcache, tls_upstream):
    cache = make_regcache(*tls_upstream.upstream_arg())
    image = tls_upstream.image
    for resp in (
        cache.manifest(tls_upstream.ns, REPO, image.tag),
        cache.blob(tls_upstream.ns, REPO, image.layer_digests[1]),
    ):
        assert resp.status == 502
        assert resp.header("Content-Type").startswith("application/json")
        message = json.loads(resp.body)["errors"][0]["message"]
        assert tls_upstream.ns in message
        assert "certificate" in message.lower(), message
    assert not stored_objects(cache)
    assert not cache.staging_files()


@pytest.mark.parametrize("variable", ["HTTPS_PROXY", "https_proxy"])
def test_https_upstream_through_a_proxy(make_regcache, tls_upstream, proxy, variable):
    before = connects_to(proxy, tls_upstream.ns)
    cache = make_regcache(
        *tls_upstream.upstream_arg(), "--upstream-ca", str(tls_upstream.ca), env={variable: proxy.url}
    )
    # First, on a new tunnel: the upstream's own status line counts, not the proxy's
    # "200 Connection established" before it.
    missing = cache.manifest(tls_upstream.ns, REPO, "no-such-tag")
    assert missing.status == 404
    assert json.loads(missing.body)["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    pull_all(cache, tls_upstream)
    assert connects_to(proxy, tls_upstream.ns) > before, f"no CONNECT {tls_upstream.ns} in the proxy's log"


@pytest.mark.parametrize("variable", ["NO_PROXY", "no_proxy"])
def test_no_proxy_upstream_bypasses_the_proxy(make_regcache, tls_upstream, proxy, variable):
    before = proxy.requests()
    cache = make_regcache(
        *tls_upstream.upstream_arg(),
        "--upstream-ca",
        str(tls_upstream.ca),
        env={"HTTPS_PROXY": proxy.url, variable: "127.0.0.1"},
    )
    pull_all(cache, tls_upstream)
    assert proxy.requests() == before, "traffic to a NO_PROXY host went through the proxy"


def test_unreachable_proxy_is_a_502_naming_the_registry(make_regcache, tls_upstream):
    dead_proxy = f"http://127.0.0.1:{free_port()}"
    cache = make_regcache(
        *tls_upstream.upstream_arg(), "--upstream-ca", str(tls_upstream.ca), env={"HTTPS_PROXY": dead_proxy}
    )
    resp = cache.manifest(tls_upstream.ns, REPO, tls_upstream.image.tag)
    assert resp.status == 502
    assert tls_upstream.ns in json.loads(resp.body)["errors"][0]["message"]
    assert not stored_objects(cache)
