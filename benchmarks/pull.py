"""Large-blob pull benchmark: regcache against the tools users would deploy instead.

    python -m benchmarks.pull --size 1G
    python -m benchmarks.pull --quick          # small blobs, one repetition: keeps the harness working

Starts two upstream distribution registries on loopback, one plain HTTP and one HTTPS with a CA
made for the run, pushes an image with one large incompressible layer and another with three,
then measures each system (direct, regcache-disk, regcache-s3, distribution in proxy mode, nginx
proxy_cache) against each upstream in six scenarios, interleaved so drift on a shared machine
spreads over all of them. Prints a table and the Core v2 targets, writes JSON and a PNG chart
(benchmarks/results/ by default). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from pathlib import Path

from benchmarks.report import Results
from benchmarks.scenarios import GROUPS, PEER_OUTCOMES, REPO, TAG, THREE_TAG, Bench, Workload, run_group
from benchmarks.systems import ALL_SYSTEMS, SharedPeers, System, find_binary
from benchmarks.upstreams import KINDS, Upstream, start_upstreams
from tests.peers.containerd import Containerd
from tests.peers.images import build_image, make_layer, random_layer
from tests.support import ROOT

UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
SCENARIO_NAMES = ("cold", "warm", "concurrent", "three", "manifests", "ctr")
RESULT_KEYS = ("cold", "warm", "concurrent", "three", "manifests", "ctr_cold", "ctr_warm")


def parse_size(text: str) -> int:
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    if text and text[-1] in UNITS:
        return int(float(text[:-1]) * UNITS[text[-1]])
    return int(text)


def human(size: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor:
            return f"{size / factor:.3g} {unit}"
    return f"{size} B"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    names = [cls.name for cls in ALL_SYSTEMS]
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", default=None, help="large layer size, e.g. 256M, 1G (default 1G; --quick 8M)")
    parser.add_argument("--three-size", default=None, help="size of each of scenario 4's blobs (default --size/3)")
    parser.add_argument("--runs", type=int, default=None, help="repetitions per scenario (default 3; --quick 1)")
    parser.add_argument("--quick", action="store_true", help="small blobs, one repetition, short loads")
    parser.add_argument(
        "--upstream-tls",
        choices=("plain", "tls", "both"),
        default="both",
        help="measure against the plain-HTTP upstream, the HTTPS one, or both (default)",
    )
    parser.add_argument("--upstream", help="an existing plain-HTTP registry (http://host:port) as the plain upstream")
    parser.add_argument("--systems", default=",".join(names), help=f"comma-separated subset of {','.join(names)}")
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIO_NAMES),
        help=f"comma-separated subset of {','.join(SCENARIO_NAMES)} (cold and warm go together)",
    )
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients in scenario 3")
    parser.add_argument("--connections", type=int, default=16, help="connections for the manifest GET rate")
    parser.add_argument(
        "--rate-seconds", type=int, default=None, help="length of the manifest load, whole seconds (default 10)"
    )
    parser.add_argument("--timeout", type=float, default=600, help="limit for any one transfer or pull, seconds")
    parser.add_argument("--out", type=Path, help="JSON output (default benchmarks/results/pull-<time>.json)")
    args = parser.parse_args(argv)
    args.size = parse_size(args.size or ("8M" if args.quick else "1G"))
    args.three_size = parse_size(args.three_size) if args.three_size else args.size // 3
    args.runs = args.runs or (1 if args.quick else 3)
    args.rate_seconds = args.rate_seconds or (1 if args.quick else 10)
    args.kinds = KINDS if args.upstream_tls == "both" else (args.upstream_tls,)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(args.systems) - set(names)
    if unknown:
        parser.error(f"--systems: unknown {', '.join(sorted(unknown))}; choose from {', '.join(names)}")
    if "direct" not in args.systems:
        args.systems.insert(0, "direct")  # every figure is also a ratio to direct
    args.scenarios = {s.strip() for s in args.scenarios.split(",") if s.strip()}
    if args.scenarios - set(SCENARIO_NAMES):
        parser.error(f"--scenarios: choose from {', '.join(SCENARIO_NAMES)}")
    if args.upstream and not args.upstream.startswith("http://"):
        parser.error("--upstream: a plain-HTTP registry URL (http://host:port)")
    if not 1 <= args.clients <= 64 or not 1 <= args.connections <= 256 or not 1 <= args.rate_seconds <= 120:
        parser.error("--clients 1-64, --connections 1-256, --rate-seconds 1-120")
    if args.size < 4096 or args.three_size < 4096:
        parser.error("--size and --three-size: at least 4K")
    return args


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


def push_images(args: argparse.Namespace, workdir: Path, upstreams: list[Upstream]) -> Workload:
    """Build the two images, push each to every upstream, and keep only their digests: the
    layers (up to 2 GiB with the defaults) are not held in memory during the measurements."""
    small = [make_layer({f"etc/small-{i}": os.urandom(4096)}) for i in range(3)]
    layout = workdir / "layout"
    print(f"building an image with a {human(args.size)} layer", flush=True)
    image = build_image(layout, [random_layer(args.size), *small], TAG)
    for upstream in upstreams:
        upstream.push(image, f"{REPO}:{TAG}")
    digest = image.layer_digests[0]
    del image
    print(f"building an image with three {human(args.three_size)} layers", flush=True)
    image = build_image(layout, [*(random_layer(args.three_size) for _ in range(3)), *small], THREE_TAG)
    for upstream in upstreams:
        upstream.push(image, f"{REPO}:{THREE_TAG}")
    return Workload(digest, args.size, image.layer_digests[:3], args.three_size)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out = args.out or ROOT / "benchmarks" / "results" / f"pull-{started.replace(':', '')}.json"
    workdir = Path(f"/tmp/regcache-bench-{os.getpid()}")
    workdir.mkdir()
    meta: dict[str, object] = {
        "started": started,
        "size": args.size,
        "size_human": human(args.size),
        "three_size": args.three_size,
        "three_size_human": human(args.three_size),
        "runs": args.runs,
        "quick": args.quick,
        "upstream_kinds": list(args.kinds),
        "clients": args.clients,
        "connections": args.connections,
        "rate_seconds": args.rate_seconds,
        **machine(),
    }
    results = Results(meta, args.kinds)
    if not (args.upstream and args.kinds == ("plain",)) and find_binary("docker-registry") is None:
        print("docker-registry not found: apt-get install docker-registry", file=sys.stderr)
        return 2
    upstreams: list[Upstream] = []
    containerd = None
    shared = SharedPeers()
    systems: list[System] = []
    try:
        upstreams = start_upstreams(args.kinds, workdir, args.upstream)
        work = push_images(args, workdir, upstreams)
        meta.update(digest=work.digest, three_digests=list(work.three))
        for upstream in upstreams:
            image = f"{upstream.host}/{REPO}"
            results.upstreams[upstream.kind] = {
                "url": upstream.url,
                "images": [f"{image}:{TAG}", f"{image}:{THREE_TAG}"],
            }
            print(f"pushed {image}:{TAG} and :{THREE_TAG} to the {upstream.kind} upstream", flush=True)
        try:
            containerd, reason = start_containerd(workdir) if "ctr" in args.scenarios else (None, "not selected")
        except (Exception, *PEER_OUTCOMES) as exc:  # noqa: BLE001 - scenario 6 is then reported as skipped
            containerd, reason = None, f"containerd did not start: {exc}"
        bench = Bench(args, work, results, workdir, containerd, reason)
        for cls in ALL_SYSTEMS:
            if cls.name not in args.systems:
                continue
            results.add_system(cls.name, cls.description)
            for upstream in upstreams:
                system = cls(upstream, shared)
                systems.append(system)
                why = system.unavailable()
                if why:
                    results.skip_system(upstream.kind, system.name, why)
                    print(f"{upstream.kind} {system.name}: skipped: {why}", flush=True)
        groups = [fn for names, fn in GROUPS if names & args.scenarios]
        for rep in range(args.runs):
            for group in groups:
                for upstream in upstreams:  # every system against one kind, then the other
                    for system in (s for s in systems if s.upstream is upstream):
                        run_group(bench, system, group, rep)
        for key in RESULT_KEYS:
            if key.split("_")[0] not in args.scenarios:
                for system in systems:
                    results.skip(system.upstream.kind, key, system.name, "not selected (--scenarios)")
    finally:
        for system in systems:
            system.close()
        shared.close()
        if containerd is not None:
            containerd.close()
        for upstream in upstreams:
            upstream.close()
        shutil.rmtree(workdir, ignore_errors=True)
    meta["loadavg_at_end"] = os.getloadavg()
    meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(results.table())
    json_path, png, why = results.write(out)
    print(f"\nwrote {json_path}" + (f" and {png}" if png else f" ({why})"))
    return 1 if results.failed() else 0


if __name__ == "__main__":
    sys.exit(main())
