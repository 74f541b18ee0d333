"""The scenarios of the pull harness, each run on a fresh instance of one system.

A group of scenarios shares one instance (cold, warm and manifests follow each other on one
cache); every group starts from an empty cache. A failure is recorded against the system and
upstream kind, never ends the run.
"""

from __future__ import annotations

import argparse
import time
import traceback
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks import load
from benchmarks.procstats import GroupMeter
from benchmarks.report import Results
from benchmarks.systems import NginxCache, Skip, System
from tests.peers.containerd import Containerd
from tests.support import ALL_MANIFEST_TYPES

REPO = "bench/image"
TAG = "1"  # not "latest": regcache's default --skip-tags never stores that one
THREE_TAG = "3"  # the image with three large layers (scenario 4)
MB = 1e6
GIB = 1 << 30
# The test peers skip or fail a pytest test when a binary is missing; here that is one system's
# (or scenario's) problem, reported as such.
PEER_OUTCOMES: tuple[type[BaseException], ...] = (pytest.skip.Exception, pytest.fail.Exception)
SETTLE_LIMIT = 120.0  # seconds to wait for a cold blob to be stored before the warm GET


@dataclass(frozen=True)
class Workload:
    """The blobs pushed to every upstream: one large layer, and three more in a second image."""

    digest: str
    size: int
    three: tuple[str, ...]
    three_size: int  # each


@dataclass
class Bench:
    """What every measurement needs: the options, the blobs, the results, containerd."""

    args: argparse.Namespace
    work: Workload
    results: Results
    workdir: Path
    containerd: Containerd | None = None
    containerd_reason: str = ""

    def say(self, text: str) -> None:
        print(text, flush=True)

    def measure(self, system: System, fn: Callable[[], dict[str, float]], digests: Collection[str]) -> dict[str, float]:
        """Run `fn` with the system's CPU, peak RSS and the upstream's GETs of `digests` counted."""
        meter = GroupMeter(system.pgid)
        mark = system.upstream.mark()
        meter.start()
        figures = fn()
        usage = meter.stop()
        if usage is not None:
            figures["cpu_s"] = usage.cpu_seconds
            figures["peak_rss_mib"] = usage.peak_rss_mib
        served = system.upstream.blob_gets_since(mark, digests)
        if served is not None:
            figures["upstream_gets"] = served[0]
            figures["upstream_mb"] = served[1] / MB
        return figures

    def record(self, scenario: str, system: System, figures: dict[str, float], rep: int) -> None:
        kind = system.upstream.kind
        self.results.add_run(kind, scenario, system.name, figures)
        shown = ", ".join(f"{k} {v:.4g}" for k, v in figures.items())
        self.say(f"  [{rep + 1}/{self.args.runs}] {kind:<5} {scenario:<10} {system.name:<20} {shown}")


def per_gib(figures: dict[str, float], size: int) -> dict[str, float]:
    """The server's CPU seconds per GiB moved, the figure that decides on two shared cores."""
    if "cpu_s" in figures:
        figures["cpu_s_per_gib"] = figures["cpu_s"] / (size / GIB)
    return figures


# -- scenarios ---------------------------------------------------------------------------------
def single_client(bench: Bench, system: System, rep: int) -> None:
    """1 and 2: a cold GET with the cache empty, then the same GET warm; then cached manifests (5)."""
    digest = bench.work.digest
    path = system.blob_path(REPO, digest)

    def one_get() -> dict[str, float]:
        t = load.get(system.port, path, timeout=bench.args.timeout, tls=system.client_tls)
        return {"mb_per_s": t.size / t.seconds / MB, "seconds": t.seconds, "ttfb_ms": t.first_byte * 1000}

    cold = per_gib(bench.measure(system, one_get, [digest]), bench.work.size)
    cold["stored_after_s"] = settle(bench, system)
    bench.record("cold", system, cold, rep)
    warm = per_gib(bench.measure(system, one_get, [digest]), bench.work.size)
    if isinstance(system, NginxCache) and (static := system.static_path(digest)):
        t = load.get(system.port, static, timeout=bench.args.timeout)
        warm["static_mb_per_s"] = t.size / t.seconds / MB
    bench.record("warm", system, warm, rep)
    if rep == 0:
        load.verify(system.port, path, digest, timeout=bench.args.timeout, tls=system.client_tls)
    if "manifests" in bench.args.scenarios:
        manifest_rate(bench, system, rep)


def settle(bench: Bench, system: System) -> float:
    """Wait (bounded) until the cold blob is stored, so the warm GET measures a hit; seconds waited."""
    started = time.perf_counter()
    limit = min(bench.args.timeout, SETTLE_LIMIT)
    while not system.stored(bench.work.digest):
        if time.perf_counter() > started + limit:
            bench.say(f"  {system.name}: blob not stored {limit:.0f}s after the cold GET; warm may reach upstream")
            break
        time.sleep(0.02)
    return time.perf_counter() - started


def manifest_rate(bench: Bench, system: System, rep: int) -> None:
    path = system.manifest_path(REPO, TAG)
    load.get(system.port, path, headers={"Accept": ALL_MANIFEST_TYPES}, tls=system.client_tls)  # now cached

    def hammer() -> dict[str, float]:
        rate = load.request_rate(system.url + path, ALL_MANIFEST_TYPES, bench.args.connections, bench.args.rate_seconds)
        return {"requests_per_s": rate.per_second, "p50_ms": rate.p50_ms, "p99_ms": rate.p99_ms}

    try:
        bench.record("manifests", system, bench.measure(system, hammer, [bench.work.digest]), rep)
    except FileNotFoundError as exc:
        bench.results.skip(system.upstream.kind, "manifests", system.name, str(exc))


def crowd(bench: Bench, system: System, digests: list[str]) -> Callable[[], dict[str, float]]:
    """One client per entry of `digests` (repeats allowed), released together."""
    paths = [system.blob_path(REPO, d) for d in digests]

    def released() -> dict[str, float]:
        wall, transfers = load.concurrent_gets(system.port, paths, timeout=bench.args.timeout, tls=system.client_tls)
        return {
            "wall_s": wall,
            "aggregate_mb_per_s": sum(t.size for t in transfers) / wall / MB,
            "last_first_byte_s": max(t.first_byte for t in transfers),
        }

    return released


def concurrent(bench: Bench, system: System, rep: int) -> None:
    """3: --clients clients released together on the same cold blob."""
    digest = bench.work.digest
    figures = bench.measure(system, crowd(bench, system, [digest] * bench.args.clients), [digest])
    bench.record("concurrent", system, figures, rep)


def three_blobs(bench: Bench, system: System, rep: int) -> None:
    """4: three different cold blobs, one client each, released together (containerd's default
    max_concurrent_downloads is 3: this is an image pull's cold path, without containerd)."""
    three = list(bench.work.three)
    figures = bench.measure(system, crowd(bench, system, three), three)
    bench.record("three", system, per_gib(figures, bench.work.three_size * len(three)), rep)
    if rep == 0:
        for digest in three:
            load.verify(system.port, system.blob_path(REPO, digest), digest, bench.args.timeout, system.client_tls)


def ctr_hosts(bench: Bench, system: System) -> Path | None:
    """containerd's --hosts-dir to pull through `system`, the upstream as fallback (None: direct,
    plain HTTP). For the TLS upstream, `ca` is how containerd trusts it: at the top level for
    the fallback `server`, and in the host entry when that entry is the upstream (direct);
    containerd 1.6 rejects a hosts.toml without a host entry."""
    ctrd, upstream = bench.containerd, system.upstream
    assert ctrd is not None
    if upstream.ca is None:
        return None if system.mirror is None else ctrd.hosts_dir(system.mirror, host=upstream.host, server=upstream.url)
    root = bench.workdir / "hosts" / f"{upstream.kind}-{system.name}"
    (root / upstream.host).mkdir(parents=True, exist_ok=True)
    ca = f'ca = "{upstream.ca}"'
    lines = [f'server = "{upstream.url}"', ca, "", f'[host."{system.mirror or upstream.url}"]']
    lines.append('  capabilities = ["pull", "resolve"]')
    if system.mirror is None:
        lines.append(f"  {ca}")
    (root / upstream.host / "hosts.toml").write_text("\n".join(lines) + "\n")
    return root


def ctr_pulls(bench: Bench, system: System, rep: int) -> None:
    """6: `ctr image pull` through the system as containerd's mirror, cold then warm."""
    ctrd = bench.containerd
    if ctrd is None:
        for key in ("ctr_cold", "ctr_warm"):
            bench.results.skip(system.upstream.kind, key, system.name, bench.containerd_reason)
        return
    ref = f"{system.upstream.host}/{REPO}:{TAG}"
    hosts = ctr_hosts(bench, system)
    for key in ("ctr_cold", "ctr_warm"):
        ctrd.remove_all_content()

        def pull() -> dict[str, float]:
            started = time.perf_counter()
            ctrd.pull(ref, hosts_dir=hosts, plain_http=hosts is None, timeout=bench.args.timeout)
            return {"seconds": time.perf_counter() - started}

        bench.record(key, system, bench.measure(system, pull, [bench.work.digest]), rep)
    ctrd.remove_all_content()


GROUPS: tuple[tuple[frozenset[str], Callable[[Bench, System, int], None]], ...] = (
    (frozenset({"cold", "warm", "manifests"}), single_client),
    (frozenset({"concurrent"}), concurrent),
    (frozenset({"three"}), three_blobs),
    (frozenset({"ctr"}), ctr_pulls),
)


def run_group(bench: Bench, system: System, group: Callable[[Bench, System, int], None], rep: int) -> None:
    """A fresh instance of `system` for one group of scenarios; a failure is recorded, not fatal."""
    kind = system.upstream.kind
    if not bench.results.ok(kind, system.name):
        return
    try:
        try:
            system.start()
            group(bench, system, rep)
        finally:
            system.stop()
    except Skip as exc:
        bench.say(f"  {kind} {system.name}: skipped: {exc}")
        bench.results.skip_system(kind, system.name, str(exc))
    except (Exception, *PEER_OUTCOMES) as exc:  # noqa: BLE001 - one broken system must not end the run
        traceback.print_exc()
        bench.say(f"  {kind} {system.name}: FAILED: {exc}")
        bench.results.skip_system(kind, system.name, f"{type(exc).__name__}: {str(exc).splitlines()[0]}", "failed")
