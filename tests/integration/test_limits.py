"""Limits that keep one client, or many, from exhausting regcache: request header size, downloads
in flight, readers per download, and connections that idle or stop reading."""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time
import urllib.parse

from tests.fakes import digest_of, serve, serve_throttled
from tests.support import log_lines, stored_blob, wait_until

REPO = "limits/app"


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed the connection (EOF or reset), None if it did not."""
    sock.settimeout(seconds)
    started = time.monotonic()
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, BrokenPipeError):
        pass
    except TimeoutError:
        return None
    return time.monotonic() - started


def test_a_connection_that_never_finishes_its_headers_is_closed(make_regcache):
    cache = make_regcache("--client-idle-timeout", "1")
    with socket.create_connection(("127.0.0.1", cache.port)) as sock:
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # and then nothing (slowloris)
        elapsed = closed_within(sock, 10)
    assert elapsed is not None and elapsed < 5


def test_an_idle_keep_alive_connection_is_closed(make_regcache):
    cache = make_regcache("--client-idle-timeout", "1")
    with socket.create_connection(("127.0.0.1", cache.port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        elapsed = closed_within(sock, 10)
    assert elapsed is not None and elapsed < 5


def test_oversized_request_headers_are_refused_without_reaching_a_handler(make_regcache, fake):
    cache = make_regcache(*fake.upstream_arg())
    with socket.create_connection(("127.0.0.1", cache.port)) as sock:
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (200 * 1024) + b"\r\n\r\n")
        sock.settimeout(10)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass
    assert not answer.startswith(b"HTTP/1.1 200")
    assert cache.get("/healthz", None).status == 200, "regcache goes on serving"
    assert "Traceback" not in cache.log()


def test_a_client_that_stops_reading_is_disconnected(make_regcache, fake):
    data = os.urandom(48 * 1024 * 1024)
    digest = digest_of(data)
    fake.routes[f"/v2/{REPO}/blobs/{digest}"] = serve(data)
    cache = make_regcache(*fake.upstream_arg(), "--client-idle-timeout", "1")
    assert cache.blob(fake.ns, REPO, digest).body == data
    stored_blob(cache.cache_dir, digest)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", cache.port))
    sock.sendall(f"GET /v2/{REPO}/blobs/{digest}?ns={urllib.parse.quote(fake.ns)} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    received = len(sock.recv(65536))
    time.sleep(4)  # reads nothing: the server's buffers fill, then it waits on us
    sock.settimeout(10)
    try:
        while chunk := sock.recv(1 << 20):
            received += len(chunk)
    except (ConnectionResetError, TimeoutError):
        pass
    sock.close()
    assert received < len(data), "the stalled client got the whole blob"
    assert wait_until(lambda: log_lines(cache.log(), r"client took no byte for 1s; closing"), timeout=5)
    assert wait_until(lambda: log_lines(cache.log(), r"status=200 \(aborted\)"), timeout=5)


def test_downloads_beyond_max_fills_are_sent_to_the_registry(make_regcache, fake):
    slow, other = os.urandom(2 * 1024 * 1024), os.urandom(64 * 1024)
    fake.routes[f"/v2/{REPO}/blobs/{digest_of(slow)}"] = serve_throttled(slow, seconds=2.0, pieces=20)
    fake.routes[f"/v2/{REPO}/blobs/{digest_of(other)}"] = serve(other)
    cache = make_regcache(*fake.upstream_arg(), "--max-fills", "1")
    first: dict[str, object] = {}
    thread = threading.Thread(target=lambda: first.update(resp=cache.blob(fake.ns, REPO, digest_of(slow))), daemon=True)
    thread.start()
    assert wait_until(lambda: cache.metrics().get("regcache_fills_in_flight") == 1, timeout=5)
    busy = cache.blob(fake.ns, REPO, digest_of(other))
    assert busy.status == 503
    [entry] = json.loads(busy.body)["errors"]
    assert entry["code"] == "UNAVAILABLE" and "downloads in flight" in entry["message"]
    assert fake.count(f"/v2/{REPO}/blobs/{digest_of(other)}") == 0
    thread.join(30)
    assert first["resp"].status == 200 and first["resp"].body == slow
    assert wait_until(lambda: cache.metrics().get("regcache_fills_in_flight") == 0, timeout=5)
    assert cache.blob(fake.ns, REPO, digest_of(other)).body == other
    assert cache.metrics()['regcache_overloaded_total{limit="fills"}'] == 1
    # The refused download left nothing behind; the last one is committed a moment after its body.
    assert wait_until(lambda: cache.staging_files() == [], timeout=5), cache.staging_files()


def test_readers_beyond_max_fill_clients_are_sent_to_the_registry(make_regcache, fake):
    data = os.urandom(2 * 1024 * 1024)
    digest = digest_of(data)
    fake.routes[f"/v2/{REPO}/blobs/{digest}"] = serve_throttled(data, seconds=2.0, pieces=20)
    cache = make_regcache(*fake.upstream_arg(), "--max-fill-clients", "2")
    results: list[tuple[int, bytes]] = []

    def pull() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", cache.port, timeout=30)
        conn.request("GET", f"/v2/{REPO}/blobs/{digest}?ns={urllib.parse.quote(fake.ns)}")
        resp = conn.getresponse()
        results.append((resp.status, resp.read()))
        conn.close()

    threads = [threading.Thread(target=pull, daemon=True) for _ in range(2)]
    threads[0].start()
    assert wait_until(lambda: cache.metrics().get("regcache_fills_in_flight") == 1, timeout=5)
    threads[1].start()
    assert wait_until(lambda: cache.metrics().get("regcache_fill_joins_total") == 1, timeout=5)
    third = cache.blob(fake.ns, REPO, digest)
    assert third.status == 503 and "clients are already reading" in json.loads(third.body)["errors"][0]["message"]
    for thread in threads:
        thread.join(30)
    assert results == [(200, data), (200, data)]
    assert cache.metrics()['regcache_overloaded_total{limit="fill-clients"}'] == 1
    assert stored_blob(cache.cache_dir, digest) == data
    assert cache.blob(fake.ns, REPO, digest).body == data, "once stored, a hit for everyone"
