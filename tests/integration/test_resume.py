"""A download the registry breaks off mid-stream is continued with a Range request (at most
twice) from the byte it reached; its clients see one uninterrupted, verified stream."""

from __future__ import annotations

import os
import threading

import pytest

from tests.conftest import BIG_REPO, Upstream
from tests.fakes import CuttingForwarder, digest_of, serve_ranges
from tests.support import blob_path, read_blob, stored_blob, wait_until

REPO = "resume/app"
SIZE = 6 * 1024 * 1024


def ranges_asked(fake, path: str) -> list[str | None]:
    return [s.headers.get("Range") for s in fake.seen if s.path == path and s.method == "GET"]


@pytest.mark.parametrize("breaks", [[1_000_000], [1_000_000, 3_500_000]], ids=["once", "twice"])
def test_a_broken_download_resumes_where_it_stopped(make_regcache, fake, breaks):
    data = os.urandom(SIZE)
    digest = digest_of(data)
    path = f"/v2/{REPO}/blobs/{digest}"
    fake.routes[path] = serve_ranges(data, breaks)
    cache = make_regcache(*fake.upstream_arg())
    status, body, complete = read_blob(cache, fake.ns, REPO, digest)
    assert status == 200 and complete and body == data
    assert ranges_asked(fake, path) == [None] + [f"bytes={b}-" for b in breaks]
    assert stored_blob(cache.cache_dir, digest) == data
    assert cache.metrics()[f'regcache_fill_resumes_total{{registry="{fake.ns}"}}'] == len(breaks)


def test_a_download_broken_three_times_is_given_up_and_nothing_is_stored(make_regcache, fake):
    data = os.urandom(SIZE)
    digest = digest_of(data)
    path = f"/v2/{REPO}/blobs/{digest}"
    fake.routes[path] = serve_ranges(data, [1_000_000, 2_000_000, 3_000_000])
    cache = make_regcache(*fake.upstream_arg())
    status, body, complete = read_blob(cache, fake.ns, REPO, digest)
    assert status == 200 and not complete
    assert body == data[: len(body)] and len(body) <= 3_000_000
    assert len(ranges_asked(fake, path)) == 3
    assert wait_until(lambda: cache.staging_files() == [], timeout=5)
    assert not blob_path(cache.cache_dir, digest).exists()


def test_a_registry_that_ignores_the_range_still_completes_the_download(make_regcache, fake):
    data = os.urandom(SIZE)
    digest = digest_of(data)
    path = f"/v2/{REPO}/blobs/{digest}"
    first = serve_ranges(data, [2_000_000])
    whole = serve_ranges(data, [])

    def ignores_range(h):
        if "Range" in h.headers:
            del h.headers["Range"]
            whole(h)  # a 200 with the whole body: the bytes we have are skipped
        else:
            first(h)

    fake.routes[path] = ignores_range
    cache = make_regcache(*fake.upstream_arg())
    status, body, complete = read_blob(cache, fake.ns, REPO, digest)
    assert status == 200 and complete and body == data
    assert stored_blob(cache.cache_dir, digest) == data


def test_every_client_of_a_resumed_download_sees_one_stream(make_regcache, fake):
    data = os.urandom(SIZE)
    digest = digest_of(data)
    fake.routes[f"/v2/{REPO}/blobs/{digest}"] = serve_ranges(data, [1_500_000, 4_000_000])
    cache = make_regcache(*fake.upstream_arg())
    results: list[tuple[int, bytes, bool]] = []
    threads = [
        threading.Thread(target=lambda: results.append(read_blob(cache, fake.ns, REPO, digest)), daemon=True)
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == 4
    assert all(r == (200, data, True) for r in results)
    assert fake.count(f"/v2/{REPO}/blobs/{digest}") == 3


def test_a_real_registry_connection_cut_mid_layer_is_resumed(make_regcache, upstream: Upstream):
    """distribution behind a forwarder that resets the first connection 10 MiB into the layer."""
    forwarder = CuttingForwarder(upstream.registry.port, cuts=[10 * 1024 * 1024])
    try:
        cache = make_regcache("--upstream", f"{upstream.ns}={forwarder.url}")
        digest = upstream.big.layer_digests[0]
        status, body, complete = read_blob(cache, upstream.ns, BIG_REPO, digest)
        assert status == 200 and complete and body == upstream.big.blob(digest)
        heads = b"".join(forwarder.requests)
        assert b"Range: bytes=" in heads
        assert stored_blob(cache.cache_dir, digest) == body
    finally:
        forwarder.close()
