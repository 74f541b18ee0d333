"""Cold and warm MB/s for one large blob through regcache (disk tier), on loopback.

    python -m benchmarks.single_blob --size 256M

Starts a distribution registry with the blob, a regcache in front of it with an empty cache
dir, and times a cold GET (upstream → cache → client, verified) and a warm GET (from disk).
The full harness (other systems, concurrency, containerd) is benchmarks/README.md's subject.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import shutil
import time

from tests.peers.images import build_image, push, random_layer
from tests.peers.registry import Registry
from tests.support import Regcache

UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    if text and text[-1] in UNITS:
        return int(float(text[:-1]) * UNITS[text[-1]])
    return int(text)


def timed_get(port: int, path: str) -> tuple[float, int, str]:
    """Seconds, bytes, sha256 of a GET read in 1 MiB pieces (the client hashes too, like containerd)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    started = time.perf_counter()
    conn.request("GET", path)
    resp = conn.getresponse()
    hasher = hashlib.sha256()
    size = 0
    while piece := resp.read(1 << 20):
        hasher.update(piece)
        size += len(piece)
    elapsed = time.perf_counter() - started
    conn.close()
    if resp.status != 200:
        raise RuntimeError(f"GET {path}: {resp.status}")
    return elapsed, size, "sha256:" + hasher.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="256M", help="blob size, e.g. 64M, 256M, 1G")
    parser.add_argument("--runs", type=int, default=3, help="cold/warm pairs (each cold run uses a new cache dir)")
    args = parser.parse_args()
    workdir = os.path.abspath(f"/tmp/regcache-bench-{os.getpid()}")
    os.makedirs(workdir)
    try:
        measure(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def measure(args: argparse.Namespace, workdir: str) -> None:
    size = parse_size(args.size)
    layer = random_layer(size)
    image = build_image(os.path.join(workdir, "layout"), [layer], "bench")
    digest = image.layer_digests[0]
    with Registry(os.path.join(workdir, "registry")) as registry:
        push(image, f"{registry.host}/bench/blob:1")
        print(f"blob {digest} {len(layer) / 1e6:.0f} MB")
        for run in range(args.runs):
            cache = Regcache(["--upstream", f"{registry.host}={registry.url}", "-l", "warning"]).start()
            path = f"/v2/bench/blob/blobs/{digest}?ns={registry.host}"
            try:
                for label in ("cold", "warm"):
                    seconds, got, seen = timed_get(cache.port, path)
                    assert got == len(layer) and seen == digest, "wrong bytes"
                    print(f"run {run + 1} {label}: {got / seconds / 1e6:8.0f} MB/s ({seconds:.2f} s)")
            finally:
                cache.stop()
                shutil.rmtree(cache.workdir, ignore_errors=True)
        seconds, got, _ = timed_get(registry.port, f"/v2/bench/blob/blobs/{digest}")
        print(f"direct from the registry: {got / seconds / 1e6:8.0f} MB/s ({seconds:.2f} s)")


if __name__ == "__main__":
    main()
