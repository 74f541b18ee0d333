"""Many clients, one download: coalescing, independent pacing, bounded memory."""

from __future__ import annotations

import hashlib
import http.client
import os
import threading
import time
import urllib.parse

import pytest

from tests.conftest import BIG_REPO
from tests.fakes import FakeUpstream, digest_of, serve_throttled
from tests.support import blob_path, stored_blob, wait_until

REPO = "conc/app"
SIZE = 64 * 1024 * 1024


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class Client(threading.Thread):
    """Reads a blob in 1 MiB pieces, hashing; `pause_after` bytes then waits for `resume`."""

    def __init__(self, port: int, path: str, pause_after: int | None = None, resume: threading.Event | None = None):
        super().__init__(daemon=True)
        self.port, self.path = port, path
        self.pause_after, self.resume = pause_after, resume
        self.status = 0
        self.first_byte_at = self.done_at = 0.0
        self.size = 0
        self.digest = ""
        self.error: BaseException | None = None
        self.start_gate = threading.Event()

    def run(self) -> None:
        try:
            self.start_gate.wait(10)
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            conn.request("GET", self.path)
            resp = conn.getresponse()
            self.status = resp.status
            hasher = hashlib.sha256()
            while True:
                piece = resp.read(1024 * 1024)
                if not piece:
                    break
                if not self.size:
                    self.first_byte_at = time.monotonic()
                hasher.update(piece)
                self.size += len(piece)
                if self.pause_after is not None and self.size >= self.pause_after and self.resume is not None:
                    self.resume.wait(60)
                    self.pause_after = None
            self.digest = "sha256:" + hasher.hexdigest()
            self.done_at = time.monotonic()
            conn.close()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


@pytest.fixture
def slow_upstream():
    fake = FakeUpstream()
    data = os.urandom(SIZE)
    digest = digest_of(data)
    # ~3 s for the whole blob: every client arrives while the download is in flight.
    fake.routes[f"/v2/{REPO}/blobs/{digest}"] = serve_throttled(data, seconds=3.0, pieces=64)
    yield fake, data, digest
    fake.close()


def test_eight_clients_share_one_download_and_a_slow_one_holds_back_nobody(make_regcache, slow_upstream):
    fake, data, digest = slow_upstream
    cache = make_regcache(*fake.upstream_arg())
    path = f"/v2/{REPO}/blobs/{digest}?ns={urllib.parse.quote(fake.ns)}"
    resume = threading.Event()
    slow = Client(cache.port, path, pause_after=2 * 1024 * 1024, resume=resume)
    fast = [Client(cache.port, path) for _ in range(7)]
    rss_before = rss_bytes(cache.proc.pid)
    started = time.monotonic()
    for client in [slow, *fast]:
        client.start()
    for client in [slow, *fast]:
        client.start_gate.set()
    for client in fast:
        client.join(30)
    assert all(c.error is None for c in fast), [c.error for c in fast]
    assert all(c.status == 200 and c.size == SIZE and c.digest == digest for c in fast)
    # The fast clients finished while the slow one sat on its first 2 MiB.
    assert slow.is_alive() and slow.size < SIZE
    # Bytes reached clients as they arrived, long before the 3 s download ended.
    assert min(c.first_byte_at for c in fast) - started < 1.5
    peak = max(rss_bytes(cache.proc.pid) for _ in range(3))
    resume.set()
    slow.join(30)
    assert slow.error is None and slow.digest == digest
    assert fake.count(f"/v2/{REPO}/blobs/{digest}") == 1, "one upstream download for eight clients"
    samples = cache.metrics()
    assert samples["regcache_fill_joins_total"] == 7
    assert samples['containerd_cache_total{result="miss"}'] == 8
    assert stored_blob(cache.cache_dir, digest) == data
    # A paused client costs a chunk, not the blob: memory stays far below the 64 MiB object.
    assert peak - rss_before < 24 * 1024 * 1024, f"RSS grew by {(peak - rss_before) >> 20} MiB"
    del started


def test_download_completes_into_the_cache_when_its_client_disconnects(make_regcache, slow_upstream):
    fake, data, digest = slow_upstream
    cache = make_regcache(*fake.upstream_arg())
    conn = http.client.HTTPConnection("127.0.0.1", cache.port, timeout=30)
    conn.request("GET", f"/v2/{REPO}/blobs/{digest}?ns={urllib.parse.quote(fake.ns)}")
    resp = conn.getresponse()
    assert resp.status == 200
    resp.read(1024 * 1024)
    conn.close()  # the client goes away after 1 MiB
    assert wait_until(lambda: blob_path(cache.cache_dir, digest).exists(), timeout=15)
    assert stored_blob(cache.cache_dir, digest) == data
    assert cache.blob(fake.ns, REPO, digest).body == data
    assert fake.count(f"/v2/{REPO}/blobs/{digest}") == 1


def test_range_while_in_flight_starts_at_the_offset(make_regcache, slow_upstream):
    fake, data, digest = slow_upstream
    cache = make_regcache(*fake.upstream_arg())
    path = f"/v2/{REPO}/blobs/{digest}?ns={urllib.parse.quote(fake.ns)}"
    first = Client(cache.port, path)
    first.start()
    first.start_gate.set()
    assert wait_until(lambda: first.size > 0, timeout=10)
    offset = 40 * 1024 * 1024
    resumed = cache.blob(fake.ns, REPO, digest, Range=f"bytes={offset}-")
    assert resumed.status == 206
    assert resumed.header("Content-Range") == f"bytes {offset}-{SIZE - 1}/{SIZE}"
    assert resumed.body == data[offset:]
    first.join(30)
    assert first.digest == digest
    assert fake.count(f"/v2/{REPO}/blobs/{digest}") == 1


def test_eight_clients_on_a_cold_blob_from_a_real_registry(cache, upstream):
    digest = upstream.big.layer_digests[0]
    expected = upstream.big.blob(digest)
    before = upstream.registry.blob_get_count(digest)
    path = f"/v2/{BIG_REPO}/blobs/{digest}?ns={urllib.parse.quote(upstream.ns)}"
    clients = [Client(cache.port, path) for _ in range(8)]
    for client in clients:
        client.start()
    for client in clients:
        client.start_gate.set()
    for client in clients:
        client.join(60)
    assert all(c.error is None and c.status == 200 and c.size == len(expected) for c in clients)
    assert {c.digest for c in clients} == {digest}
    assert upstream.registry.blob_get_count(digest) == before + 1
