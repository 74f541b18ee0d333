"""Parallel layer downloads as containerd 2.1+ makes them, against every way a blob is answered.

containerd fetches one layer in chunks: chunk 0 asks `Range: bytes=0-`, chunk i asks
`Range: bytes=<i * chunk>-`, and each reader closes its connection once it has its chunk's
length. A 200 (no Content-Range) to chunk 0 turns the parallelism off; a 200 to a later chunk
would hand it the layer's first bytes. The clients here do exactly that over raw HTTP.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from tests.conftest import BIG_REPO, REPO, Upstream
from tests.fakes import Behaviour, FakeHandler, digest_of
from tests.integration.test_s3 import dead_upstream, s3_env, uploads_done
from tests.peers.seaweed import SeaweedS3
from tests.support import Regcache, blob_path, request, stored_blob, wait_until

CHUNKS = 4
FAKE_REPO = "chunks/app"


@dataclass(frozen=True)
class Chunk:
    """What one chunk reader got before it hung up."""

    offset: int
    status: int
    content_range: str | None
    content_length: str | None
    body: bytes


def read_chunk(url: str, offset: int, length: int, method: str = "GET", follow: bool = False) -> Chunk:
    """GET with `Range: bytes=<offset>-`, read `length` body bytes, hang up (as containerd's
    chunk reader closes the body it has read enough of). `follow`: take a 307 to its Location
    with the same Range, as Go's HTTP client does."""
    headers = {"Range": f"bytes={offset}-", "Accept-Encoding": "zstd;q=1.0, gzip;q=0.8, deflate;q=0.5"}
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), headers=headers)
        resp = conn.getresponse()
        if follow and resp.status == 307:
            location = resp.getheader("Location") or ""
            conn.close()
            return read_chunk(location, offset, length, method)
        body = bytearray()
        while method == "GET" and len(body) < length:
            piece = resp.read(min(1 << 20, length - len(body)))
            if not piece:
                break
            body += piece
        return Chunk(
            offset, resp.status, resp.getheader("Content-Range"), resp.getheader("Content-Length"), bytes(body)
        )
    finally:
        conn.close()  # mid-body: the rest of the answer is left unread


def blob_url(cache: Regcache, ns: str, repo: str, digest: str) -> str:
    return f"{cache.url}/v2/{repo}/blobs/{digest}?ns={urllib.parse.quote(ns)}"


def parallel_fetch(
    url: str, size: int, chunks: int = CHUNKS, read: int | None = None, follow: bool = False
) -> list[Chunk]:
    """`chunks` readers at once, reader i from byte i*size/chunks, each taking its chunk's
    length (or only `read` bytes of it) and hanging up."""
    step = -(-size // chunks)
    offsets = [i * step for i in range(chunks) if i * step < size]
    results: list[Chunk | BaseException | None] = [None] * len(offsets)
    gate = threading.Barrier(len(offsets))

    def run(i: int) -> None:
        try:
            gate.wait(10)
            length = min(step, size - offsets[i])
            results[i] = read_chunk(url, offsets[i], length if read is None else min(read, length), follow=follow)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(offsets))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    for result in results:
        if not isinstance(result, Chunk):
            raise AssertionError(f"a chunk reader failed: {result!r}")
    return [r for r in results if isinstance(r, Chunk)]


def assert_chunks(chunks: list[Chunk], data: bytes, read: int | None = None) -> None:
    """Every chunk is a 206 naming its own range, with the bytes of that range."""
    size = len(data)
    for chunk in chunks:
        assert chunk.status == 206, (chunk.offset, chunk.status, chunk.body[:200])
        assert chunk.content_range == f"bytes {chunk.offset}-{size - 1}/{size}", chunk
        assert chunk.content_length == str(size - chunk.offset), chunk
        assert chunk.body == data[chunk.offset : chunk.offset + len(chunk.body)], f"wrong bytes at {chunk.offset}"
        if read is not None:
            assert len(chunk.body) == min(read, size - chunk.offset)
    if read is None:
        whole = b"".join(c.body for c in sorted(chunks, key=lambda c: c.offset))
        assert hashlib.sha256(whole).hexdigest() == hashlib.sha256(data).hexdigest()


@pytest.fixture
def stopped(upstream: Upstream) -> Iterator[Callable[[], None]]:
    """Stops the session's registry for the rest of the test; it runs again afterwards."""
    yield upstream.registry.stop
    if not upstream.registry.running:
        upstream.registry.start()


def big_layer(upstream: Upstream) -> tuple[str, bytes]:
    digest = upstream.big.layer_digests[0]
    return digest, upstream.big.blob(digest)


# --- stored on disk, and in flight ------------------------------------------------------------


def test_chunk_readers_of_a_cold_blob_make_one_download_that_is_stored(cache, upstream, stopped):
    digest, data = big_layer(upstream)
    before = upstream.registry.blob_get_count(digest)
    chunks = parallel_fetch(blob_url(cache, upstream.ns, BIG_REPO, digest), len(data))
    assert_chunks(chunks, data)
    assert stored_blob(cache.cache_dir, digest) == data
    assert upstream.registry.blob_get_count(digest) == before + 1, "one upstream download for four chunk readers"
    samples = cache.metrics()
    assert samples['containerd_cache_total{result="miss"}'] == CHUNKS
    # Served from the cache alone afterwards, in chunks again.
    stopped()
    assert_chunks(parallel_fetch(blob_url(cache, upstream.ns, BIG_REPO, digest), len(data)), data)
    assert cache.cache_count("hit") == CHUNKS


def test_a_cold_blob_is_stored_although_every_chunk_reader_hung_up_early(cache, upstream, stopped):
    digest, data = big_layer(upstream)
    before = upstream.registry.blob_get_count(digest)
    # Every reader takes 64 KiB of its chunk and leaves: nobody reads to the end.
    chunks = parallel_fetch(blob_url(cache, upstream.ns, BIG_REPO, digest), len(data), read=64 * 1024)
    assert_chunks(chunks, data, read=64 * 1024)
    assert stored_blob(cache.cache_dir, digest, timeout=30) == data
    assert upstream.registry.blob_get_count(digest) == before + 1
    assert "fill blobs/sha256/" in cache.log() and "(not stored)" not in cache.log()
    stopped()
    whole = request(blob_url(cache, upstream.ns, BIG_REPO, digest), headers={"Range": "bytes=0-"})
    assert (whole.status, whole.header("Content-Range")) == (206, f"bytes 0-{len(data) - 1}/{len(data)}")
    assert whole.body == data


def test_the_first_reader_of_a_cold_blob_may_ask_from_the_middle(cache, upstream):
    digest, data = big_layer(upstream)
    offset = len(data) // 2
    chunk = read_chunk(blob_url(cache, upstream.ns, BIG_REPO, digest), offset, 1 << 20)
    assert (chunk.status, chunk.content_range) == (206, f"bytes {offset}-{len(data) - 1}/{len(data)}")
    assert chunk.body == data[offset : offset + (1 << 20)]
    assert stored_blob(cache.cache_dir, digest, timeout=30) == data


def test_chunk_readers_of_a_stored_blob(cache, upstream):
    layer = upstream.app.layer_digests[2]  # 3 MiB
    data = upstream.app.blob(layer)
    assert cache.blob(upstream.ns, REPO, layer).body == data
    assert stored_blob(cache.cache_dir, layer) == data
    before = upstream.registry.blob_get_count(layer)
    assert_chunks(parallel_fetch(blob_url(cache, upstream.ns, REPO, layer), len(data)), data)
    assert upstream.registry.blob_get_count(layer) == before
    assert cache.cache_count("hit") == CHUNKS


@pytest.mark.parametrize("stored", [True, False], ids=["stored", "in-flight"])
def test_ranges_that_cannot_be_served_as_asked(cache, upstream, stored):
    digest, data = big_layer(upstream)
    url = blob_url(cache, upstream.ns, BIG_REPO, digest)
    if stored:
        assert request(url).body == data
        stored_blob(cache.cache_dir, digest)
    # Past the end: 416 naming the size, whatever the source.
    past = request(url, headers={"Range": f"bytes={len(data)}-"})
    assert (past.status, past.header("Content-Range")) == (416, f"bytes */{len(data)}")
    assert b"RANGE_INVALID" in past.body
    # Several ranges: served whole (RFC 9110 lets a server ignore a Range it does not support).
    several = request(url, headers={"Range": "bytes=0-9,20-29"})
    assert (several.status, several.header("Content-Range"), several.body) == (200, None, data)
    assert wait_until(lambda: blob_path(cache.cache_dir, digest).exists())


# --- the storage-broken pass-through ------------------------------------------------------------


def break_storage(cache: Regcache) -> None:
    """The staging dir becomes a file: nothing can be written (a full or read-only disk)."""
    staging = cache.cache_dir / "staging"
    staging.rename(cache.cache_dir / "staging.moved")
    staging.write_text("not a directory")


def test_chunk_readers_are_answered_in_ranges_when_the_cache_cannot_store(cache, upstream):
    digest, data = big_layer(upstream)
    break_storage(cache)
    before = upstream.registry.blob_get_count(digest)
    chunks = parallel_fetch(blob_url(cache, upstream.ns, BIG_REPO, digest), len(data))
    assert_chunks(chunks, data)
    # One request upstream per chunk (nothing is stored or shared), each only for its range.
    assert upstream.registry.blob_get_count(digest) == before + CHUNKS
    assert not blob_path(cache.cache_dir, digest).exists()
    samples = cache.metrics()
    assert samples["regcache_storage_passthrough_total"] == CHUNKS
    assert samples['containerd_cache_total{result="skip"}'] == CHUNKS
    # Chunk 0 was asked whole (and verified on the way); the others by their own ranges.
    answers = [e.status for e in upstream.registry.requests() if e.method == "GET" and e.path.endswith(digest)]
    assert sorted(answers[-CHUNKS:]) == [200] + [206] * (CHUNKS - 1)
    # A range past the end is the registry's 416, naming the size.
    past = request(blob_url(cache, upstream.ns, BIG_REPO, digest), headers={"Range": f"bytes={len(data)}-"})
    assert (past.status, past.header("Content-Range")) == (416, f"bytes */{len(data)}")
    # Read whole, chunk 0 is still verified: its last byte comes only after the digest matched.
    whole = request(blob_url(cache, upstream.ns, BIG_REPO, digest), headers={"Range": "bytes=0-"})
    assert (whole.status, whole.header("Content-Range"), whole.body) == (
        206,
        f"bytes 0-{len(data) - 1}/{len(data)}",
        data,
    )


def ranges_honoured_once(data: bytes, honour: bool, content_range: str | None = None) -> Behaviour:
    """A registry that serves `Range: bytes=N-` (or ignores it, or names another range)."""

    def behaviour(h: FakeHandler) -> None:
        header = h.headers.get("Range", "")
        start = int(header[len("bytes=") : -1]) if honour and header.endswith("-") else 0
        h.send_response(206 if start or content_range else 200)
        if start or content_range:
            h.send_header("Content-Range", content_range or f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.send_header("Content-Length", str(len(data) - start))
        h.end_headers()
        try:
            h.wfile.write(data[start:])
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True  # the cache stopped reading: its chunk reader hung up

    return behaviour


@pytest.mark.parametrize("honour", [True, False], ids=["registry-honours-range", "registry-ignores-range"])
def test_a_pass_through_chunk_gets_its_own_bytes_whatever_the_registry_does_with_the_range(make_regcache, fake, honour):
    data = os.urandom(3 * 1024 * 1024 + 5)
    digest = digest_of(data)
    fake.routes[f"/v2/{FAKE_REPO}/blobs/{digest}"] = ranges_honoured_once(data, honour)
    cache = make_regcache(*fake.upstream_arg())
    break_storage(cache)
    assert_chunks(parallel_fetch(blob_url(cache, fake.ns, FAKE_REPO, digest), len(data)), data)
    asked = [s.headers.get("Range") for s in fake.seen if s.path.endswith(digest)]
    step = -(-len(data) // CHUNKS)
    assert sorted(asked, key=str) == sorted([None, *(f"bytes={i * step}-" for i in range(1, CHUNKS))], key=str)


def test_a_pass_through_206_for_another_range_is_refused(make_regcache, fake):
    data = os.urandom(1024 * 1024)
    digest = digest_of(data)
    fake.routes[f"/v2/{FAKE_REPO}/blobs/{digest}"] = ranges_honoured_once(data, True, "bytes 0-1048575/1048576")
    cache = make_regcache(*fake.upstream_arg())
    break_storage(cache)
    wrong = request(blob_url(cache, fake.ns, FAKE_REPO, digest), headers={"Range": "bytes=1000-"})
    assert wrong.status == 502 and data[1000:2000] not in wrong.body
    assert "bytes 0-1048575/1048576" in json.loads(wrong.body)["errors"][0]["message"]


# --- HEAD, If-Range ------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["stored", "upstream"])
def test_a_head_with_a_range_is_answered_as_the_get_would_be(cache, upstream, where):
    layer = upstream.app.layer_digests[2]
    size = len(upstream.app.blob(layer))
    if where == "stored":
        cache.blob(upstream.ns, REPO, layer)
        stored_blob(cache.cache_dir, layer)
    head = cache.blob(upstream.ns, REPO, layer, method="HEAD", Range="bytes=1000-")
    assert head.status == 206 and head.body == b""
    assert head.header("Content-Range") == f"bytes 1000-{size - 1}/{size}"
    assert head.header("Content-Length") == str(size - 1000)
    assert head.header("Docker-Content-Digest") == layer
    past = cache.blob(upstream.ns, REPO, layer, method="HEAD", Range=f"bytes={size}-")
    assert (past.status, past.header("Content-Range")) == (416, f"bytes */{size}")
    assert cache.blob(upstream.ns, REPO, layer, method="HEAD").status == 200
    if where == "upstream":
        assert not blob_path(cache.cache_dir, layer).exists(), "a HEAD never starts a download"


def test_if_range_honours_the_range_only_for_the_blobs_own_etag(cache, upstream):
    layer = upstream.app.layer_digests[2]
    data = upstream.app.blob(layer)
    url = blob_url(cache, upstream.ns, REPO, layer)
    first = request(url)
    assert first.header("Etag") == f'"{layer}"'
    same = request(url, headers={"Range": "bytes=10-", "If-Range": f'"{layer}"'})
    assert (same.status, same.body) == (206, data[10:])
    for other in ('"sha256:0000"', "Wed, 02 Dec 2026 10:00:00 GMT", f'W/"{layer}"'):
        whole = request(url, headers={"Range": "bytes=10-", "If-Range": other})
        assert (whole.status, whole.header("Content-Range"), whole.body) == (200, None, data), other


# --- S3: a blob only in the bucket, a cold blob in S3 mode, presigned redirects -------------------


@pytest.fixture(scope="module")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    with SeaweedS3(tmp_path_factory.mktemp("weed")) as s3:
        yield s3


@pytest.fixture
def bucket(weed: SeaweedS3) -> str:
    return weed.bucket(f"regcache-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def start_s3_cache(make_regcache, weed: SeaweedS3, bucket: str, upstream: Upstream) -> Callable[..., Regcache]:
    def start(*args: str, upstream_arg: list[str] | None = None) -> Regcache:
        return make_regcache(
            "-b", bucket, *(upstream.upstream_arg() if upstream_arg is None else upstream_arg), *args, env=s3_env(weed)
        )

    return start


def in_s3_only(start_s3_cache, weed: SeaweedS3, bucket: str, upstream: Upstream, *args: str) -> Regcache:
    """A replica whose registry is unreachable, after another put the big layer in the bucket."""
    digest, data = big_layer(upstream)
    first = start_s3_cache()
    assert first.blob(upstream.ns, BIG_REPO, digest).body == data
    uploads_done(first, weed, bucket, [digest])
    return start_s3_cache(*args, upstream_arg=dead_upstream(upstream))


@pytest.mark.parametrize("read", [None, 64 * 1024], ids=["whole-chunks", "all-hang-up-early"])
def test_chunk_readers_of_a_blob_only_in_s3_share_one_copy_that_is_stored_locally(
    start_s3_cache, weed, bucket, upstream, read
):
    digest, data = big_layer(upstream)
    second = in_s3_only(start_s3_cache, weed, bucket, upstream)
    chunks = parallel_fetch(blob_url(second, upstream.ns, BIG_REPO, digest), len(data), read=read)
    assert_chunks(chunks, data, read=read)
    assert stored_blob(second.cache_dir, digest, timeout=30) == data
    copies = [line for line in second.log().splitlines() if f"fill blobs/sha256/{digest[7:9]}/" in line]
    assert len(copies) == 1 and " from s3: " in copies[0], copies
    head = second.blob(upstream.ns, BIG_REPO, digest, method="HEAD", Range="bytes=7-")
    assert (head.status, head.header("Content-Range")) == (206, f"bytes 7-{len(data) - 1}/{len(data)}")


def test_chunk_readers_of_a_cold_blob_in_s3_mode_make_one_download(start_s3_cache, weed, bucket, upstream, stopped):
    digest, data = big_layer(upstream)
    cache = start_s3_cache()
    before = upstream.registry.blob_get_count(digest)
    assert_chunks(parallel_fetch(blob_url(cache, upstream.ns, BIG_REPO, digest), len(data)), data)
    assert upstream.registry.blob_get_count(digest) == before + 1
    uploads_done(cache, weed, bucket, [digest])
    stopped()
    assert_chunks(parallel_fetch(blob_url(cache, upstream.ns, BIG_REPO, digest), len(data)), data)


def test_chunk_readers_follow_the_presigned_redirect_with_their_range(start_s3_cache, weed, bucket, upstream):
    digest, data = big_layer(upstream)
    second = in_s3_only(start_s3_cache, weed, bucket, upstream, "--s3-redirect")
    first = read_chunk(blob_url(second, upstream.ns, BIG_REPO, digest), 0, 0)
    assert first.status == 307, "the cache redirects every chunk reader to S3"
    # S3 answers each chunk's Range itself: 206 and the chunk's bytes.
    chunks = parallel_fetch(blob_url(second, upstream.ns, BIG_REPO, digest), len(data), follow=True)
    assert_chunks(chunks, data)
    assert not blob_path(second.cache_dir, digest).exists(), "the bytes went from S3 to the clients"
