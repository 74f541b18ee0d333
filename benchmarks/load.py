"""The clients: timed GETs, concurrent GETs, a manifest request loop, and `ctr image pull`.

Timed clients read into one reused 1 MiB buffer and do not hash: on two cores a hashing client
would take a core from the server it measures. The bytes are checked once per system by a
separate, untimed GET that hashes what it gets (`verify`). Every loop is bounded in count and
time: each socket has a timeout, each load has a deadline. `tls` (an SSL context that trusts the
run's CA) is only for `direct` against the HTTPS upstream: the caches listen on plain HTTP.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from tests.peers.net import clean_env

BUFFER = 1 << 20


@dataclass(frozen=True)
class Transfer:
    status: int
    size: int
    seconds: float
    first_byte: float  # seconds from sending the request to the first body bytes


def connect(port: int, timeout: float, tls: ssl.SSLContext | None = None) -> http.client.HTTPConnection:
    """A connection to 127.0.0.1:port, over TLS verified against `tls` when it is given."""
    if tls is None:
        return http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    return http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=tls)


def get(
    port: int,
    path: str,
    *,
    timeout: float = 300.0,
    headers: dict[str, str] | None = None,
    tls: ssl.SSLContext | None = None,
) -> Transfer:
    """One GET, its body read and dropped; raises on a non-200 answer or a short body."""
    conn = connect(port, timeout, tls)
    try:
        started = time.perf_counter()
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        size = len(resp.read1(64 << 10))
        first = time.perf_counter() - started
        buf = memoryview(bytearray(BUFFER))
        deadline = started + timeout
        while n := resp.readinto(buf):
            size += n
            if time.perf_counter() > deadline:
                raise TimeoutError(f"GET {path}: not done after {timeout:.0f}s")
        seconds = time.perf_counter() - started
    finally:
        conn.close()
    expected = resp.getheader("Content-Length")
    if resp.status != 200 or (expected is not None and int(expected) != size):
        raise RuntimeError(f"GET {path}: status {resp.status}, {size} bytes of {expected}")
    return Transfer(resp.status, size, seconds, first)


def verify(port: int, path: str, digest: str, timeout: float = 300.0, tls: ssl.SSLContext | None = None) -> None:
    """An untimed GET that hashes the body: the system served exactly the blob's bytes."""
    conn = connect(port, timeout, tls)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        hasher = hashlib.sha256()
        while piece := resp.read(BUFFER):
            hasher.update(piece)
    finally:
        conn.close()
    seen = "sha256:" + hasher.hexdigest()
    if resp.status != 200 or seen != digest:
        raise RuntimeError(f"GET {path}: status {resp.status}, body hashes to {seen}, not {digest}")


def concurrent_gets(
    port: int, paths: Sequence[str], timeout: float = 600.0, tls: ssl.SSLContext | None = None
) -> tuple[float, list[Transfer]]:
    """One client per path (the same path repeated, or different blobs), released together;
    (wall seconds, transfers in the order of `paths`)."""
    clients = len(paths)
    barrier = threading.Barrier(clients + 1)
    results: list[Transfer | BaseException] = [RuntimeError("client did not finish")] * clients

    def client(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = get(port, paths[i], timeout=timeout, tls=tls)
        except BaseException as exc:  # noqa: BLE001 - reported to the caller below
            results[i] = exc

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait(timeout=30)
    started = time.perf_counter()
    for t in threads:
        t.join(timeout + 30)
    wall = time.perf_counter() - started
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        raise RuntimeError(f"{len(failed)} of {clients} clients failed: {failed[0]}")
    return wall, [r for r in results if isinstance(r, Transfer)]


@dataclass(frozen=True)
class Rate:
    requests: int
    per_second: float
    p50_ms: float
    p99_ms: float


def request_rate(url: str, accept: str, connections: int, seconds: int) -> Rate:
    """Keep-alive GETs of one URL from `connections` connections for `seconds` (ApacheBench).

    ab reads its time limit as whole seconds (`-t 0.5` is no limit at all), hence an int.

    ab is a single C process, so the client costs far less CPU than the servers it loads; it
    stops at the time limit or after a bounded number of requests, whichever comes first.
    """
    ab = shutil.which("ab")
    if ab is None:
        raise FileNotFoundError("ab not found: apt-get install apache2-utils")
    with tempfile.TemporaryDirectory(prefix="regcache-bench-ab-") as tmp:
        csv = os.path.join(tmp, "percentiles.csv")
        argv = [ab, "-q", "-k", "-c", str(connections), "-t", str(seconds), "-n", "10000000"]
        argv += ["-s", "30", "-H", f"Accept: {accept}", "-e", csv, url]
        done = subprocess.run(argv, capture_output=True, text=True, env=clean_env(), timeout=seconds + 60)
        if done.returncode != 0:
            raise RuntimeError(f"ab failed ({done.returncode}): {done.stderr.strip() or done.stdout[-500:]}")
        out = done.stdout
        percentiles = {}
        with open(csv) as f:
            for line in f.read().splitlines()[1:]:
                pct, _, ms = line.partition(",")
                percentiles[int(float(pct))] = float(ms)

    def field(name: str) -> str:
        m = re.search(rf"^{name}:\s+(\S+)", out, re.M)
        if m is None:
            raise RuntimeError(f"ab printed no {name!r}:\n{out[-1000:]}")
        return m.group(1)

    complete = int(field("Complete requests"))
    failed = int(field("Failed requests"))
    non_2xx = re.search(r"^Non-2xx responses:\s+(\d+)", out, re.M)
    if failed or non_2xx or complete == 0:
        raise RuntimeError(f"ab: {complete} complete, {failed} failed, {non_2xx and non_2xx.group(1)} non-2xx")
    return Rate(complete, float(field("Requests per second")), percentiles[50], percentiles[99])
