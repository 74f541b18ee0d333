"""Large-blob pull benchmark: regcache against the tools users would deploy instead.

    python -m benchmarks.pull --size 1G
    python -m benchmarks.pull --quick          # small blob, one repetition: keeps the harness working

Starts an upstream distribution registry on loopback, pushes an image with one large
incompressible layer and a few small ones, then measures each system (direct, regcache-disk,
regcache-s3, distribution in proxy mode, nginx proxy_cache) in five scenarios, interleaved so
drift on a shared machine spreads over all of them. Prints a table, writes JSON and a PNG chart
(benchmarks/results/ by default). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks import load
from benchmarks.procstats import GroupMeter
from benchmarks.report import Results
from benchmarks.systems import ALL_SYSTEMS, NginxCache, Skip, System, Upstream, find_binary
from tests.peers.containerd import Containerd
from tests.peers.images import build_image, make_layer, push, random_layer
from tests.peers.registry import Registry
from tests.support import ALL_MANIFEST_TYPES, ROOT

UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
REPO = "bench/image"
TAG = "1"  # not "latest": regcache's default --skip-tags never stores that one
MB = 1e6
# The test peers skip or fail a pytest test when a binary is missing; here that is one system's
# (or scenario's) problem, reported as such.
PEER_OUTCOMES: tuple[type[BaseException], ...] = (pytest.skip.Exception, pytest.fail.Exception)
SETTLE_LIMIT = 120.0  # seconds to wait for a cold blob to be stored before the warm GET


def parse_size(text: str) -> int:
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    if text and text[-1] in UNITS:
        return int(float(text[:-1]) * UNITS[text[-1]])
    return int(text)


@dataclass
class Bench:
    """What every measurement needs: the upstream, the image, the options, the results."""

    args: argparse.Namespace
    upstream: Upstream
    digest: str
    size: int
    results: Results
    containerd: Containerd | None = None
    containerd_reason: str = ""

    def say(self, text: str) -> None:
        print(text, flush=True)

    def measure(self, system: System, fn: Callable[[], dict[str, float]]) -> dict[str, float]:
        """Run `fn` with the system's CPU, peak RSS and the upstream's blob GETs counted."""
        meter = GroupMeter(system.pgid)
        mark = self.upstream.mark()
        meter.start()
        figures = fn()
        usage = meter.stop()
        if usage is not None:
            figures["cpu_s"] = usage.cpu_seconds
            figures["peak_rss_mib"] = usage.peak_rss_mib
        served = self.upstream.blob_gets_since(mark, self.digest)
        if served is not None:
            figures["upstream_gets"] = served[0]
            figures["upstream_mb"] = served[1] / MB
        return figures

    def record(self, scenario: str, system: System, figures: dict[str, float], rep: int) -> None:
        self.results.add_run(scenario, system.name, figures)
        shown = ", ".join(f"{k} {v:.4g}" for k, v in figures.items())
        self.say(f"  [{rep + 1}/{self.args.runs}] {scenario:<10} {system.name:<20} {shown}")


# -- scenarios ---------------------------------------------------------------------------------
def single_client(bench: Bench, system: System, rep: int) -> None:
    """1 and 2: a cold GET with the cache empty, then the same GET warm; then cached manifests (4)."""
    path = system.blob_path(REPO, bench.digest)

    def one_get() -> dict[str, float]:
        t = load.get(system.port, path, timeout=bench.args.timeout)
        return {"mb_per_s": t.size / t.seconds / MB, "seconds": t.seconds, "ttfb_ms": t.first_byte * 1000}

    def per_gib(figures: dict[str, float]) -> dict[str, float]:
        if "cpu_s" in figures:
            figures["cpu_s_per_gib"] = figures["cpu_s"] / (bench.size / (1 << 30))
        return figures

    cold = per_gib(bench.measure(system, one_get))
    cold["stored_after_s"] = settle(bench, system)
    bench.record("cold", system, cold, rep)
    warm = per_gib(bench.measure(system, one_get))
    if isinstance(system, NginxCache) and (static := system.static_path(bench.digest)):
        t = load.get(system.port, static, timeout=bench.args.timeout)
        warm["static_mb_per_s"] = t.size / t.seconds / MB
    bench.record("warm", system, warm, rep)
    if rep == 0:
        load.verify(system.port, path, bench.digest, timeout=bench.args.timeout)
    if "manifests" in bench.args.scenarios:
        manifest_rate(bench, system, rep)


def settle(bench: Bench, system: System) -> float:
    """Wait (bounded) until the cold blob is stored, so the warm GET measures a hit; seconds waited."""
    started = time.perf_counter()
    limit = min(bench.args.timeout, SETTLE_LIMIT)
    while not system.stored(bench.digest):
        if time.perf_counter() > started + limit:
            bench.say(f"  {system.name}: blob not stored {limit:.0f}s after the cold GET; warm may reach upstream")
            break
        time.sleep(0.02)
    return time.perf_counter() - started


def manifest_rate(bench: Bench, system: System, rep: int) -> None:
    path = system.manifest_path(REPO, TAG)
    load.get(system.port, path, headers={"Accept": ALL_MANIFEST_TYPES})  # now cached

    def hammer() -> dict[str, float]:
        rate = load.request_rate(system.url + path, ALL_MANIFEST_TYPES, bench.args.connections, bench.args.rate_seconds)
        return {"requests_per_s": rate.per_second, "p50_ms": rate.p50_ms, "p99_ms": rate.p99_ms}

    try:
        bench.record("manifests", system, bench.measure(system, hammer), rep)
    except FileNotFoundError as exc:
        bench.results.skip("manifests", system.name, str(exc))


def concurrent(bench: Bench, system: System, rep: int) -> None:
    """3: N clients released together on the same cold blob."""
    path = system.blob_path(REPO, bench.digest)
    clients = bench.args.clients

    def crowd() -> dict[str, float]:
        wall, transfers = load.concurrent_gets(system.port, path, clients, timeout=bench.args.timeout)
        return {
            "wall_s": wall,
            "aggregate_mb_per_s": sum(t.size for t in transfers) / wall / MB,
            "last_first_byte_s": max(t.first_byte for t in transfers),
        }

    bench.record("concurrent", system, bench.measure(system, crowd), rep)


def ctr_pulls(bench: Bench, system: System, rep: int) -> None:
    """5: `ctr image pull` through the system as containerd's mirror, cold then warm."""
    ctrd = bench.containerd
    if ctrd is None:
        for key in ("ctr_cold", "ctr_warm"):
            bench.results.skip(key, system.name, bench.containerd_reason)
        return
    host = bench.upstream.host
    ref = f"{host}/{REPO}:{TAG}"
    hosts = None if system.mirror is None else ctrd.hosts_dir(system.mirror, host=host, server=bench.upstream.url)
    for key in ("ctr_cold", "ctr_warm"):
        ctrd.remove_all_content()

        def pull() -> dict[str, float]:
            started = time.perf_counter()
            ctrd.pull(ref, hosts_dir=hosts, plain_http=hosts is None, timeout=bench.args.timeout)
            return {"seconds": time.perf_counter() - started}

        bench.record(key, system, bench.measure(system, pull), rep)
    ctrd.remove_all_content()


GROUPS: tuple[tuple[frozenset[str], Callable[[Bench, System, int], None]], ...] = (
    (frozenset({"cold", "warm", "manifests"}), single_client),
    (frozenset({"concurrent"}), concurrent),
    (frozenset({"ctr"}), ctr_pulls),
)


def run_group(bench: Bench, system: System, group: Callable[[Bench, System, int], None], rep: int) -> None:
    """A fresh instance of `system` for one group of scenarios; a failure is recorded, not fatal."""
    status = bench.results.systems[system.name]
    if status["status"] != "ok":
        return
    try:
        try:
            system.start()
            group(bench, system, rep)
        finally:
            system.stop()
    except Skip as exc:
        bench.say(f"  {system.name}: skipped: {exc}")
        bench.results.skip_system(system.name, str(exc))
    except (Exception, *PEER_OUTCOMES) as exc:  # noqa: BLE001 - one broken system must not end the run
        traceback.print_exc()
        bench.say(f"  {system.name}: FAILED: {exc}")
        bench.results.skip_system(system.name, f"{type(exc).__name__}: {str(exc).splitlines()[0]}", "failed")


# -- setup -------------------------------------------------------------------------------------
def start_containerd(workdir: Path) -> tuple[Containerd | None, str]:
    if os.geteuid() != 0:
        return None, "containerd needs root"
    for binary in ("containerd", "ctr"):
        if find_binary(binary) is None:
            return None, f"{binary} not found: apt-get install containerd"
    return Containerd(workdir / "containerd", namespace="bench").start(), ""


def machine() -> dict[str, object]:
    import pycurl
    import tornado

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "tornado": tornado.version,
        "libcurl": pycurl.version,
        "kernel": platform.release(),
        "loadavg_at_start": os.getloadavg(),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    names = [cls.name for cls in ALL_SYSTEMS]
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", default=None, help="large layer size, e.g. 256M, 1G (default 1G; --quick 8M)")
    parser.add_argument("--runs", type=int, default=None, help="repetitions per scenario (default 3; --quick 1)")
    parser.add_argument("--quick", action="store_true", help="small blob, one repetition, short loads")
    parser.add_argument("--upstream", help="an existing plain-HTTP registry (http://host:port) to push to and measure")
    parser.add_argument("--systems", default=",".join(names), help=f"comma-separated subset of {','.join(names)}")
    parser.add_argument(
        "--scenarios",
        default="cold,warm,concurrent,manifests,ctr",
        help="comma-separated subset of cold,warm,concurrent,manifests,ctr (cold and warm go together)",
    )
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients in scenario 3")
    parser.add_argument("--connections", type=int, default=16, help="connections for the manifest GET rate")
    parser.add_argument("--rate-seconds", type=float, default=None, help="length of the manifest load (default 10)")
    parser.add_argument("--timeout", type=float, default=600, help="limit for any one transfer or pull, seconds")
    parser.add_argument("--out", type=Path, help="JSON output (default benchmarks/results/pull-<time>.json)")
    args = parser.parse_args(argv)
    args.size = parse_size(args.size or ("8M" if args.quick else "1G"))
    args.runs = args.runs or (1 if args.quick else 3)
    args.rate_seconds = args.rate_seconds or (1.0 if args.quick else 10.0)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(args.systems) - set(names)
    if unknown:
        parser.error(f"--systems: unknown {', '.join(sorted(unknown))}; choose from {', '.join(names)}")
    if "direct" not in args.systems:
        args.systems.insert(0, "direct")  # every figure is also a ratio to direct
    args.scenarios = {s.strip() for s in args.scenarios.split(",") if s.strip()}
    if args.upstream and not args.upstream.startswith("http://"):
        parser.error("--upstream: a plain-HTTP registry URL (http://host:port)")
    if not 1 <= args.clients <= 64 or not 1 <= args.connections <= 256 or not 0 < args.rate_seconds <= 120:
        parser.error("--clients 1-64, --connections 1-256, --rate-seconds up to 120")
    return args


def human(size: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor:
            return f"{size / factor:g} {unit}"
    return f"{size} B"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out = args.out or ROOT / "benchmarks" / "results" / f"pull-{started.replace(':', '')}.json"
    workdir = Path(f"/tmp/regcache-bench-{os.getpid()}")
    workdir.mkdir()
    meta = {
        "started": started,
        "size": args.size,
        "size_human": human(args.size),
        "runs": args.runs,
        "quick": args.quick,
        "clients": args.clients,
        "connections": args.connections,
        "rate_seconds": args.rate_seconds,
        **machine(),
    }
    results = Results(meta)
    print(f"building an image with a {human(args.size)} layer", flush=True)
    layers = [random_layer(args.size), *(make_layer({f"etc/small-{i}": os.urandom(4096)}) for i in range(3))]
    image = build_image(workdir / "layout", layers, TAG)
    digest = image.layer_digests[0]
    registry = None if args.upstream else Registry(workdir / "upstream")
    containerd = None
    systems: list[System] = []
    try:
        if registry is not None:
            if find_binary("docker-registry") is None:
                print("docker-registry not found: apt-get install docker-registry", file=sys.stderr)
                return 2
            registry.start()
        upstream = Upstream(args.upstream.rstrip("/") if args.upstream else registry.url, registry)
        push(image, f"{upstream.host}/{REPO}:{TAG}")
        meta.update(upstream=upstream.url, digest=digest, image=f"{upstream.host}/{REPO}:{TAG}")
        print(f"pushed {upstream.host}/{REPO}:{TAG}, layer {digest}", flush=True)
        try:
            containerd, reason = start_containerd(workdir) if "ctr" in args.scenarios else (None, "not selected")
        except (Exception, *PEER_OUTCOMES) as exc:  # noqa: BLE001 - scenario 5 is then reported as skipped
            containerd, reason = None, f"containerd did not start: {exc}"
        bench = Bench(args, upstream, digest, args.size, results, containerd, reason)
        for cls in ALL_SYSTEMS:
            if cls.name not in args.systems:
                continue
            system = cls(upstream)
            systems.append(system)
            results.add_system(system.name, system.description)
            why = system.unavailable()
            if why:
                results.skip_system(system.name, why)
                print(f"{system.name}: skipped: {why}", flush=True)
        groups = [(names, fn) for names, fn in GROUPS if names & args.scenarios]
        for rep in range(args.runs):
            for _, group in groups:
                for system in systems:
                    run_group(bench, system, group, rep)
        for scenario in ("cold", "warm", "concurrent", "manifests", "ctr_cold", "ctr_warm"):
            base = scenario.split("_")[0]
            if base not in args.scenarios:
                for system in systems:
                    results.skip(scenario, system.name, "not selected (--scenarios)")
    finally:
        for system in systems:
            system.close()
        if containerd is not None:
            containerd.close()
        if registry is not None:
            registry.close()
        shutil.rmtree(workdir, ignore_errors=True)
    meta["loadavg_at_end"] = os.getloadavg()
    meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(results.table())
    json_path, png, why = results.write(out)
    print(f"\nwrote {json_path}" + (f" and {png}" if png else f" ({why})"))
    failed = [n for n, s in results.systems.items() if s["status"] == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
