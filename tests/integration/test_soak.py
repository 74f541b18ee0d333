"""A randomized soak: many clients at once, random ranges and hang-ups, an upstream that fails at
random (wrong bytes, short bodies, resets, stalls, 5xx) and sometimes honours the Range of a
resumed download. Whatever happens, no client holds a complete-looking body that is wrong, the
cache holds only verified objects and no leftovers, and memory stays bounded.

The seed is printed; `REGCACHE_SOAK_SEED=<seed>` replays the same faults and client plans (the
thread timing differs from run to run, so a failure may need a few replays).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import random
import re
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

import pytest

from tests.fakes import Fault, FaultInjector, digest_of
from tests.support import Regcache, blob_path, read_blob, stored_blob, wait_until

REPO = "soak/app"
REQUESTS = 900
SOAK_SECONDS = 40.0
CONCURRENCY = 16
# A client that gets no byte for this long is stuck: a failed download must end its readers'
# connections, and a stalled one is given up after 3 × the 2 s idle timeout and a few seconds.
CLIENT_TIMEOUT = 30.0
# regcache peaks at ~45 MiB at start-up and at 64-87 MiB in this soak (8 seeds). Memory per
# client is one 1 MiB chunk and per download at most its blob (4 MiB, under the 8 MiB pause mark):
# 16 clients and 12 downloads add well under 100 MiB, while keeping the bodies served (~550 MiB)
# or a chunk per request would not fit.
PEAK_RSS_MIB = 200
MIB = 1024 * 1024
SIZES = [0, 1, 2, 4095, 65_537, MIB - 1, MIB, MIB + 1, 2 * MIB + 12_345, 3 * MIB + 7, 4 * MIB, 1_500_000]
# The upstream's mix. Every third blob gets only faulty answers while the soak runs, so its
# downloads keep failing and clients keep reading doomed downloads until the end.
MIX = {
    Fault.GOOD: 4,
    Fault.WRONG_BYTES: 1,
    Fault.SHORT_BODY: 1,
    Fault.RESET: 1,
    Fault.STALL: 1,
    Fault.SERVER_ERROR: 1,
}
BROKEN_MIX = {fault: weight for fault, weight in MIX.items() if fault is not Fault.GOOD}


@pytest.fixture
def seed() -> int:
    chosen = int(os.environ.get("REGCACHE_SOAK_SEED") or random.SystemRandom().randrange(1 << 32))
    print(f"soak seed: REGCACHE_SOAK_SEED={chosen}")
    return chosen


@dataclass(frozen=True)
class Blob:
    data: bytes
    digest: str

    @property
    def path(self) -> str:
        return f"/v2/{REPO}/blobs/{self.digest}"


@dataclass(frozen=True)
class Plan:
    """One client request: which blob, which Range, and after how many bytes to hang up."""

    number: int
    blob: Blob
    range_header: str | None
    hang_up_after: int | None
    reset: bool  # hang up with an RST rather than a FIN


def random_range(rng: random.Random, size: int) -> str | None:
    """No Range (2 in 5), or one of each form, at times past the end: a 416 must be right too."""
    kind = rng.choice(["none", "none", "first-last", "from", "suffix"])
    if kind == "first-last":
        first = rng.randint(0, size + 1)
        return f"bytes={first}-{first + rng.randint(0, size + 2)}"
    if kind == "from":
        return f"bytes={rng.randint(0, size + 1)}-"
    if kind == "suffix":
        return f"bytes=-{rng.randint(0, size + 2)}"
    return None


def make_plan(seed: int, number: int, blobs: list[Blob]) -> Plan:
    rng = random.Random(f"{seed}:client:{number}")
    blob = rng.choice(blobs)
    hang_up = rng.randint(0, len(blob.data)) if rng.random() < 0.3 else None
    return Plan(number, blob, random_range(rng, len(blob.data)), hang_up, rng.random() < 0.5)


def expected_range(header: str, size: int) -> tuple[int, int] | None:
    """RFC 9110's answer to one valid byte range: (start, end exclusive), None if unsatisfiable."""
    first, last = re.fullmatch(r"bytes=(\d*)-(\d*)", header).groups()
    if not first:
        suffix = int(last)
        return (size - min(suffix, size), size) if suffix and size else None
    start = int(first)
    if start >= size:
        return None
    return start, size if not last else min(int(last) + 1, size)


@dataclass
class Answer:
    """What one client saw."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    complete: bool = False  # all of Content-Length arrived and the connection did not break
    hung_up: bool = False  # the client left before the end
    error: str | None = None


def fetch(port: int, ns: str, plan: Plan) -> Answer:
    """One request on its own connection, read in pieces as a puller does, or left part-way."""
    answer = Answer()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT)
    try:
        conn.connect()
        sock = conn.sock
        headers = {"Range": plan.range_header} if plan.range_header else {}
        conn.request("GET", f"{plan.blob.path}?ns={urllib.parse.quote(ns)}", headers=headers)
        resp = conn.getresponse()
        answer.status, answer.headers = resp.status, {k.lower(): v for k, v in resp.getheaders()}
        body = bytearray()
        try:
            while piece := resp.read(256 * 1024):
                body += piece
                if plan.hang_up_after is not None and len(body) >= plan.hang_up_after:
                    break
        except http.client.IncompleteRead as exc:
            body += exc.partial
        except (ConnectionError, http.client.HTTPException) as exc:
            answer.error = repr(exc)
        answer.body = bytes(body)
        length = answer.headers.get("content-length")
        answer.complete = answer.error is None and length is not None and len(body) == int(length)
        answer.hung_up = not answer.complete and plan.hang_up_after is not None and len(body) >= plan.hang_up_after
        if plan.hang_up_after is not None and plan.reset and sock.fileno() >= 0:
            # A reset instead of a FIN; a socket the server closed (Connection: close) is gone already.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        resp.close()
    except TimeoutError:
        answer.error = f"no byte for {CLIENT_TIMEOUT:.0f}s"
    except (ConnectionError, http.client.HTTPException) as exc:
        answer.error = repr(exc)  # before or while the headers came
    finally:
        conn.close()
    return answer


def judge(plan: Plan, answer: Answer) -> str | None:
    """What is wrong with an answer, if anything, from the client's side."""
    data = plan.blob.data
    if answer.error is not None and answer.error.startswith("no byte"):
        return answer.error
    if answer.status == 0:
        return f"the connection ended before any answer: {answer.error}"
    if answer.status in (502, 503, 416):
        if b"Traceback" in answer.body or not answer.headers.get("content-type", "").startswith("application/json"):
            return f"{answer.status} without an OCI JSON error body: {answer.body[:200]!r}"
        if answer.status == 416 and (not plan.range_header or expected_range(plan.range_header, len(data))):
            return f"416 for a satisfiable range of {len(data)} bytes"
        return None
    if answer.status not in (200, 206):
        return f"status {answer.status}: {answer.body[:200]!r}"
    if not answer.complete:
        return None  # a cut stream is what a client of a failed download must see
    if answer.status == 200 and answer.body != data:
        return f"a complete 200 of {len(answer.body)} bytes hashing to {digest_of(answer.body)}"
    if answer.status == 206:
        if not plan.range_header:
            return "206 to a request without a Range"
        wanted = expected_range(plan.range_header, len(data))
        if wanted is None:
            return f"206 for an unsatisfiable range of {len(data)} bytes"
        content_range = f"bytes {wanted[0]}-{wanted[1] - 1}/{len(data)}"
        if answer.headers.get("content-range") != content_range:
            return f"Content-Range {answer.headers.get('content-range')!r}, not {content_range!r}"
        if answer.body != data[wanted[0] : wanted[1]]:
            return f"a complete 206 of {len(answer.body)} bytes that differ from the blob's"
    return None


@dataclass
class Soak:
    """Runs the plans on CONCURRENCY threads until REQUESTS are done or SOAK_SECONDS pass."""

    cache: Regcache
    ns: str
    seed: int
    blobs: list[Blob]
    problems: list[str] = field(default_factory=list)
    tally: dict[str, int] = field(default_factory=dict)
    started: int = 0
    received: int = 0  # body bytes, over all clients

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._deadline = time.monotonic() + SOAK_SECONDS

    def run(self) -> None:
        threads = [threading.Thread(target=self._client, daemon=True) for _ in range(CONCURRENCY)]
        for thread in threads:
            thread.start()
        # A request may start just before the deadline and then wait a full timeout, twice.
        stuck_after = self._deadline + 2 * CLIENT_TIMEOUT
        for thread in threads:
            thread.join(max(0.0, stuck_after - time.monotonic()))
        assert not any(t.is_alive() for t in threads), "a client thread is stuck"

    def _next(self) -> Plan | None:
        with self._lock:
            if self.started >= REQUESTS or time.monotonic() > self._deadline:
                return None
            self.started += 1
            return make_plan(self.seed, self.started - 1, self.blobs)

    def _client(self) -> None:
        while (plan := self._next()) is not None:
            answer = fetch(self.cache.port, self.ns, plan)
            problem = judge(plan, answer)
            outcome = "no answer" if answer.status == 0 else str(answer.status)
            outcome += " complete" if answer.complete else " hung up" if answer.hung_up else " cut"
            with self._lock:
                self.tally[outcome] = self.tally.get(outcome, 0) + 1
                self.received += len(answer.body)
                if problem is not None:
                    self.problems.append(
                        f"request {plan.number} (blob of {len(plan.blob.data)} bytes {plan.blob.digest},"
                        f" Range {plan.range_header}, hang up after {plan.hang_up_after}): {problem}"
                    )


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc")


def test_soak_with_random_faults_and_clients(make_regcache, fake, seed):
    rng = random.Random(seed)
    blobs = [Blob(data, digest_of(data)) for data in (rng.randbytes(size) for size in SIZES)]
    injector = FaultInjector(seed, MIX)
    for number, blob in enumerate(blobs):
        fake.routes[blob.path] = injector.route(blob.data, BROKEN_MIX if number % 3 == 2 else None)
    cache = make_regcache(*fake.upstream_arg(), "--upstream-idle-timeout", "2")
    soak = Soak(cache, fake.ns, seed, blobs)
    try:
        soak.run()
    finally:
        injector.faulty = False
        injector.release()
    summary = (
        f"seed {seed}: {soak.started} requests, {soak.received // MIB} MiB received,"
        f" answers {dict(sorted(soak.tally.items()))};"
        f" upstream {dict((f.value, n) for f, n in injector.served.items())},"
        f" {injector.ranges_honoured} ranges honoured"
    )
    print(summary)
    assert soak.problems == [], f"{summary}\n" + "\n".join(soak.problems)
    # The soak did what it says: every fault was injected, resumes were answered with a 206,
    # and clients got whole and ranged answers to judge.
    assert set(injector.served) == set(Fault), summary
    assert injector.ranges_honoured > 0, summary
    assert soak.tally.get("200 complete", 0) > 0 and soak.tally.get("206 complete", 0) > 0, summary

    # Once the upstream behaves, every blob comes whole and right, and is stored.
    assert wait_until(lambda: cache.staging_files() == [], timeout=20), cache.staging_files()
    for blob in blobs:
        assert read_blob(cache, fake.ns, REPO, blob.digest, timeout=CLIENT_TIMEOUT) == (200, blob.data, True), (
            f"seed {seed}: {len(blob.data)} bytes {blob.digest}"
        )
        assert stored_blob(cache.cache_dir, blob.digest) == blob.data
    stored = cache.stored_files("blobs")
    assert sorted(stored) == sorted(blob_path(cache.cache_dir, blob.digest) for blob in blobs)
    for path in stored:
        assert "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest() == f"sha256:{path.name}", path
    assert wait_until(lambda: cache.staging_files() == [], timeout=10), cache.staging_files()
    peak = peak_rss_mib(cache.proc.pid)
    print(f"regcache peak RSS {peak:.0f} MiB")
    assert peak < PEAK_RSS_MIB, f"seed {seed}: peak RSS {peak:.0f} MiB"
    assert "Traceback" not in cache.log()
