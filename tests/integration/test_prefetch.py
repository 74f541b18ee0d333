"""`regcache prefetch` fills a running cache as containerd would pull, and `--offline` serves what
it filled: a real docker-registry upstream, a multi-platform image, and a real containerd."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.peers.containerd import Containerd
from tests.peers.images import Image, Index, build_image, build_index, host_architecture, make_layer, push, random_layer
from tests.peers.net import clean_env, free_port
from tests.peers.registry import Registry
from tests.peers.tokenserver import TokenServer
from tests.support import ROOT, blob_path, request

OTHER_ARCH = "arm64" if host_architecture() == "amd64" else "amd64"


@dataclass
class Images:
    registry: Registry
    web: Index  # demo/web:1.0, this machine's platform and another, sharing a layer
    tool: Image  # demo/tool:2.0, one platform, not prefetched in the offline tests

    @property
    def ns(self) -> str:
        return self.registry.host

    def upstream_arg(self) -> list[str]:
        return ["--upstream", f"{self.ns}={self.registry.url}"]

    def ref(self, name: str) -> str:
        return f"{self.ns}/{name}"

    def upstream_requests(self) -> int:
        return len(self.registry.requests())


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Images]:
    layout = tmp_path_factory.mktemp("prefetch-layout")
    shared = make_layer({"etc/os-release": b"NAME=prefetch-demo\n"})
    here = build_image(layout, [shared, random_layer(3 << 20, seed=31)], "here")
    other = build_image(layout, [shared, random_layer(2 << 20, seed=32)], "other", architecture=OTHER_ARCH)
    web = build_index(layout, [here, other], "1.0")
    tool = build_image(layout, [make_layer({"bin/tool": b"#!/bin/sh\n"})], "2.0")
    registry = Registry(tmp_path_factory.mktemp("prefetch-upstream")).start()
    push(web, f"{registry.host}/demo/web:1.0")
    push(web, f"{registry.host}/demo/web:latest")
    push(tool, f"{registry.host}/demo/tool:2.0")
    yield Images(registry, web, tool)
    registry.close()


@pytest.fixture(scope="module")
def containerd() -> Iterator[Containerd]:
    daemon = Containerd().start()
    yield daemon
    daemon.close()


def prefetch(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "regcache", "prefetch", *args],
        capture_output=True,
        text=True,
        input=stdin,
        env=clean_env(),
        cwd=ROOT,
        timeout=120,
    )


def all_blobs(index: Index) -> set[str]:
    return {digest for image in index.images for digest in image.blob_digests}


def stored(cache_dir: Path, digests: set[str]) -> set[str]:
    return {digest for digest in digests if blob_path(cache_dir, digest).exists()}


def test_prefetch_fills_the_cache_and_containerd_pulls_from_it_with_the_upstream_stopped(
    make_regcache, images, containerd
):
    cache = make_regcache(*images.upstream_arg())
    ref = images.ref("demo/web:1.0")
    first = prefetch(
        "--via", cache.url, "--platform", f"linux/amd64,linux/{OTHER_ARCH}", "--platform", "linux/arm64", ref
    )
    assert first.returncode == 0, first.stderr + first.stdout
    # Both platforms' configs and layers are in the cache; the layer they share was fetched once.
    blobs = all_blobs(images.web)
    assert stored(cache.cache_dir, blobs) == blobs
    row = next(line for line in first.stdout.splitlines() if line.startswith(ref))
    assert "linux/amd64,linux/arm64" in row and f" {len(blobs)} " in row and row.endswith("ok")
    assert re.search(rf" 0 \(0 B\)\s+{len(blobs)} \(", row), "all fetched now, none cached before"
    # On a pipe, plain lines: what it resolved to, and how it ended.
    assert f"{ref}  {images.web.digest}" in first.stderr
    assert f"{ref}  done" in first.stderr

    again = prefetch("--via", cache.url, "--platform", "all", ref)
    assert again.returncode == 0, again.stderr
    assert f"{len(blobs)} blobs" in again.stderr and f"({len(blobs)} cached before, 0 fetched now)" in again.stderr

    images.registry.stop()
    try:
        result = containerd.pull(ref, hosts_dir=containerd.hosts_dir(cache.url), check=False)
    finally:
        images.registry.start()
    assert result.returncode == 0, result.stdout + result.stderr
    assert ref in containerd.images()
    containerd.remove_all_content()


def test_offline_cache_serves_a_prefetched_image_and_sends_containerd_elsewhere_for_the_rest(
    make_regcache, images, containerd, tmp_path
):
    filler = make_regcache(*images.upstream_arg(), cache_dir=tmp_path / "cache")
    ref = images.ref("demo/web:1.0")
    filled = prefetch("--via", filler.url, ref)  # this machine's platform, as containerd pulls
    assert filled.returncode == 0, filled.stderr + filled.stdout
    filler.stop()

    # Tags are served however old (--tag-ttl 0 would otherwise ask the registry each time).
    offline = make_regcache(
        *images.upstream_arg(), "--tag-ttl", "0", cache_dir=tmp_path / "cache", env={"REGCACHE_OFFLINE": "true"}
    )
    assert "offline: no registry is contacted" in offline.log()
    assert request(f"{offline.url}/readyz").status == 200
    before = images.upstream_requests()
    hosts = containerd.hosts_dir(offline.url)
    containerd.pull(ref, hosts_dir=hosts)
    assert ref in containerd.images()
    assert images.upstream_requests() == before, "the offline cache asked the registry"

    # Not cached: a 404 that says why, at once and without the registry; containerd then pulls
    # from the registry itself (its next host).
    missing = offline.manifest(images.ns, "demo/tool", "2.0")
    assert missing.status == 404
    assert b"MANIFEST_UNKNOWN" in missing.body and b"offline" in missing.body
    assert images.upstream_requests() == before
    blob = offline.blob(images.ns, "demo/tool", images.tool.layer_digests[0])
    assert blob.status == 404 and b"BLOB_UNKNOWN" in blob.body
    tool = images.ref("demo/tool:2.0")
    containerd.pull(tool, hosts_dir=hosts)
    assert tool in containerd.images()
    assert images.upstream_requests() > before, "containerd fetched it from the registry"
    samples = offline.metrics()
    assert samples.get(f'regcache_offline_misses_total{{kind="manifest",registry="{images.ns}"}}', 0) >= 2
    assert samples.get(f'regcache_offline_misses_total{{kind="blob",registry="{images.ns}"}}', 0) >= 1
    assert "Traceback" not in offline.log()
    containerd.remove_all_content()

    # prefetch through an offline cache fails with the cache's reason, per image.
    through_offline = prefetch("--via", offline.url, tool)
    assert through_offline.returncode == 1
    assert f"FAILED {tool}: 404 MANIFEST_UNKNOWN: regcache is offline" in through_offline.stdout


def test_prefetch_of_a_tag_the_cache_does_not_store_says_so(make_regcache, images):
    cache = make_regcache(*images.upstream_arg())  # default --skip-tags latest
    ref = images.ref("demo/web:latest")
    result = prefetch("--via", cache.url, ref)
    assert result.returncode == 0, result.stderr
    assert f"note: {ref}: the cache did not store the tag" in result.stdout


def test_prefetch_fails_per_image_with_the_reason_and_goes_on_with_the_others(make_regcache, images, tmp_path):
    cache = make_regcache(*images.upstream_arg())
    listing = tmp_path / "images.txt"
    listing.write_text(f"# what the nodes run\n{images.ref('demo/tool:2.0')}\n\n{images.ref('demo/nope:1')}\n")
    result = prefetch("--via", cache.url, "-f", str(listing), "--platform", "linux/s390x", images.ref("demo/web:1.0"))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert any(line.startswith(images.ref("demo/tool:2.0")) and line.endswith("ok") for line in lines)
    assert f"FAILED {images.ref('demo/nope:1')}: 404 MANIFEST_UNKNOWN" in result.stdout
    assert f"FAILED {images.ref('demo/web:1.0')}: its index has no linux/s390x (only linux/amd64, linux/arm64)" in (
        result.stdout
    )
    assert blob_path(cache.cache_dir, images.tool.layer_digests[0]).exists()


def test_prefetch_gets_an_anonymous_token_where_the_registry_wants_one(make_regcache, images, tmp_path):
    """Docker Hub wants a token even for public images; regcache without credentials passes its
    401 on, and prefetch, like containerd, asks the realm for an anonymous token."""
    server = TokenServer(tmp_path / "tokens", anonymous_pull=True).start()
    registry = Registry(tmp_path / "registry", token=server.auth()).start()
    try:
        push(images.tool, f"{registry.host}/demo/tool:2.0", creds=(server.user, server.password))
        server.reset()
        cache = make_regcache("--upstream", f"{registry.host}={registry.url}")
        ref = f"{registry.host}/demo/tool:2.0"
        result = prefetch("--via", cache.url, ref)
        assert result.returncode == 0, result.stdout + result.stderr
        assert blob_path(cache.cache_dir, images.tool.layer_digests[0]).exists()
        anonymous = [r for r in server.requests if r.method == "GET" and r.authorization is None]
        assert len(anonymous) == 1, "one token for the repository, then reused"
    finally:
        registry.close()
        server.stop()


@pytest.mark.parametrize(
    "args, words",
    [
        (["Alpine:3.20"], "invalid image reference 'Alpine:3.20': repository name must be lower-case"),
        (["alpine:bad/tag"], "invalid image reference 'alpine:bad/tag'"),
        (["alpine@sha256:1234"], "invalid image reference 'alpine@sha256:1234'"),
        (["--platform", "linux/amd64,amd46", "alpine"], "--platform: invalid platform 'amd46'"),
        (["--via", "ftp://cache:21", "alpine"], "--via 'ftp://cache:21': expected http://host:port"),
        ([], "no image given"),
        (["-f", "/nonexistent/images.txt"], "-f /nonexistent/images.txt: cannot read"),
    ],
)
def test_bad_input_is_exit_2_with_one_line_that_names_it(args, words):
    result = prefetch(*args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("regcache prefetch: error: ")
    assert words in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_line_in_the_images_file_is_named_by_its_line(tmp_path):
    listing = tmp_path / "images.txt"
    listing.write_text("alpine:3.20\nnot a reference\n")
    result = prefetch("-f", str(listing))
    assert result.returncode == 2
    assert f"{listing}:2: invalid image reference 'not a reference': contains white space" in result.stderr


def test_an_unreachable_cache_is_one_clear_error():
    port = free_port()
    result = prefetch("--port", str(port), "alpine")
    assert result.returncode == 1
    assert result.stderr == (
        f"regcache prefetch: error: cannot reach the cache at http://127.0.0.1:{port}: Connection refused "
        "(is regcache running there? --via names it)\n"
    )
