"""Cached blobs served from disk (sendfile): clients that leave early, ranges deep in a large
blob, and a stored file cut short from outside."""

from __future__ import annotations

import hashlib
import http.client
import os
import socket

from tests.conftest import BIG_SIZE
from tests.support import blob_path, stored_blob, wait_until

BIG_REPO = "test/big"


def _warm(cache, upstream) -> tuple[str, bytes]:
    digest = upstream.big.layer_digests[0]
    data = upstream.big.layers[0]
    assert cache.blob(upstream.ns, BIG_REPO, digest).status == 200
    assert stored_blob(cache.cache_dir, digest) == data
    return digest, data


def test_clients_that_leave_mid_blob_do_not_disturb_the_next_one(cache, upstream):
    digest, data = _warm(cache, upstream)
    path = f"/v2/{BIG_REPO}/blobs/{digest}?ns={upstream.ns}"
    # Several times each: the next connection often gets the descriptor number of the last one.
    for how in ("close", "reset") * 5:
        sock = socket.create_connection(("127.0.0.1", cache.port), timeout=10)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        got = sock.recv(256 * 1024)
        assert got.startswith(b"HTTP/1.1 200")
        if how == "reset":  # RST instead of FIN: the server's next send fails at once
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    whole = cache.blob(upstream.ns, BIG_REPO, digest)
    assert whole.status == 200 and hashlib.sha256(whole.body).digest() == hashlib.sha256(data).digest()
    # Every request finished (one log line each): none is left hanging on a vanished socket.
    assert wait_until(lambda: cache.log().count(f"/blobs/{digest}") >= 12)
    assert "Traceback" not in cache.log() and "ERROR" not in cache.log()


def test_ranges_deep_in_a_large_cached_blob(cache, upstream):
    digest, data = _warm(cache, upstream)
    start = BIG_SIZE - 5 * 1024 * 1024 - 7
    part = cache.blob(upstream.ns, BIG_REPO, digest, Range=f"bytes={start}-{start + 4 * 1024 * 1024}")
    assert part.status == 206
    assert part.header("Content-Range") == f"bytes {start}-{start + 4 * 1024 * 1024}/{len(data)}"
    assert part.body == data[start : start + 4 * 1024 * 1024 + 1]
    head = cache.blob(upstream.ns, BIG_REPO, digest, method="HEAD", Range="bytes=10-19")
    assert head.status == 206 and head.body == b"" and head.header("Content-Length") == "10"


def test_a_stored_file_cut_short_never_reads_as_complete(cache, upstream):
    """The stored file is truncated from outside after the answer's headers said how long it is."""
    digest, data = _warm(cache, upstream)
    conn = http.client.HTTPConnection("127.0.0.1", cache.port, timeout=10)
    conn.request("GET", f"/v2/{BIG_REPO}/blobs/{digest}?ns={upstream.ns}")
    resp = conn.getresponse()
    assert resp.status == 200 and int(resp.getheader("Content-Length")) == len(data)
    os.truncate(blob_path(cache.cache_dir, digest), len(data) // 2)
    received = 0
    try:
        while piece := resp.read(1 << 20):
            received += len(piece)
    except http.client.IncompleteRead as exc:
        received += len(exc.partial)
    finally:
        conn.close()
    assert received < len(data)
