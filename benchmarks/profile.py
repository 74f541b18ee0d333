"""Where regcache's time goes during one transfer: py-spy samples, summed by function.

    python -m benchmarks.profile cold --size 512M
    python -m benchmarks.profile warm|concurrent|manifests

Starts an upstream registry with one blob and a regcache in front of it, attaches
`py-spy record --threads` to regcache for the duration of the chosen load, and prints the share
of samples per thread and the functions with the most samples (own and inclusive). Needs py-spy
(`pip install py-spy`) and the test peers.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import load
from benchmarks.procstats import GroupMeter
from benchmarks.pull import parse_size
from tests.peers.images import build_image, push, random_layer
from tests.peers.registry import Registry
from tests.support import ALL_MANIFEST_TYPES, Regcache


def summarize(raw: Path, top: int) -> str:
    """Thread shares, then the top functions by own and by inclusive samples."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        threads[frames[0]] += n
        own[frames[-1]] += n
        for frame in set(frames[1:]):
            inclusive[frame] += n
    if not total:
        return "no samples"
    lines = [f"{total} samples"]
    lines += [f"{n / total:6.1%}  {name}" for name, n in threads.most_common(6)]
    lines.append("-- own")
    lines += [f"{n / total:6.1%}  {name}" for name, n in own.most_common(top)]
    lines.append("-- inclusive")
    lines += [f"{n / total:6.1%}  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("load", choices=("cold", "warm", "concurrent", "manifests"))
    parser.add_argument("--size", default="512M", help="blob size")
    parser.add_argument("--top", type=int, default=25, help="functions to list")
    parser.add_argument("--rate", type=int, default=250, help="samples per second")
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy")
    if spy is None:
        print("py-spy not found: pip install py-spy", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="regcache-profile-"))
    image = build_image(work / "layout", [random_layer(parse_size(args.size))], "1")
    digest = image.layer_digests[0]
    try:
        with Registry(work / "upstream") as registry:
            push(image, f"{registry.host}/bench/blob:1")
            cache = Regcache(["--upstream", f"{registry.host}={registry.url}"]).start()
            try:
                blob = f"/v2/bench/blob/blobs/{digest}?ns={registry.host}"
                manifest = f"/v2/bench/blob/manifests/1?ns={registry.host}"
                if args.load in ("warm", "manifests"):
                    load.get(cache.port, blob)
                    load.get(cache.port, manifest, headers={"Accept": ALL_MANIFEST_TYPES})
                raw = work / "profile.txt"
                argv = [spy, "record", "-p", str(cache.proc.pid), "-f", "raw", "-o", str(raw), "-r", str(args.rate)]
                recorder = subprocess.Popen(
                    [*argv, "--threads", "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
                )
                time.sleep(1.0)  # py-spy attaches
                meter = GroupMeter(cache.proc.pid)
                meter.start()
                if args.load == "concurrent":
                    wall, _ = load.concurrent_gets(cache.port, [blob] * 8)
                    print(f"8 clients: {wall:.2f} s wall")
                elif args.load == "manifests":
                    rate = load.request_rate(cache.url + manifest, ALL_MANIFEST_TYPES, 16, 5)
                    print(f"manifests: {rate.per_second:.0f}/s, p50 {rate.p50_ms:.1f} ms, p99 {rate.p99_ms:.1f} ms")
                else:
                    t = load.get(cache.port, blob)
                    print(f"{args.load}: {t.size / t.seconds / 1e6:.0f} MB/s, {t.seconds:.2f} s")
                usage = meter.stop()
                if usage is not None:
                    print(f"regcache CPU {usage.cpu_seconds:.2f} s, peak RSS {usage.peak_rss_mib:.0f} MiB")
                time.sleep(0.3)
                recorder.send_signal(signal.SIGINT)
                recorder.wait(30)
                print(summarize(raw, args.top))
            finally:
                cache.stop()
                shutil.rmtree(cache.workdir, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
