"""A real containerd pulls through regcache as its mirror, then again with the upstream gone."""

from __future__ import annotations

import pytest

from tests.conftest import REPO
from tests.peers.containerd import Containerd
from tests.support import stored_blob


@pytest.fixture(scope="module")
def containerd():
    daemon = Containerd().start()
    yield daemon
    daemon.close()


def test_containerd_pulls_through_the_mirror_and_again_with_the_upstream_stopped(containerd, cache, upstream):
    ref = f"{upstream.ns}/{REPO}:1.0"
    hosts = containerd.hosts_dir(cache.url)
    containerd.pull(ref, hosts_dir=hosts)
    assert ref in containerd.images()
    # containerd named the origin with ns=, and regcache stored every blob of the image.
    access = [line for line in cache.log().splitlines() if "regcache.access" in line and "/v2/test/app/" in line]
    assert access and all(f"ns={upstream.ns}" in line for line in access)
    for digest in upstream.app.blob_digests:
        assert stored_blob(cache.cache_dir, digest) == upstream.app.blob(digest)

    containerd.remove_image(ref)
    containerd.remove_all_content()
    assert upstream.app.layer_digests[0] not in containerd.content()
    hits_before = cache.cache_count("hit")
    upstream.registry.stop()
    try:
        containerd.pull(ref, hosts_dir=hosts)
    finally:
        upstream.registry.start()
    assert ref in containerd.images()
    # Manifest by tag, config and three layers (at least): all served from the cache.
    assert cache.cache_count("hit") - hits_before >= 1 + len(upstream.app.blob_digests)
    containerd.remove_image(ref)
    containerd.remove_all_content()


def test_containerd_pull_by_digest_through_the_mirror(containerd, cache, upstream):
    ref = f"{upstream.ns}/{REPO}@{upstream.app2.manifest_digest}"
    containerd.pull(ref, hosts_dir=containerd.hosts_dir(cache.url))
    assert any(upstream.app2.manifest_digest in image for image in containerd.images())
    assert cache.cache_count("miss") >= 1
    containerd.remove_image(ref)
    containerd.remove_all_content()
