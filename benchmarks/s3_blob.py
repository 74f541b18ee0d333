"""Cold, warm and S3-hit MB/s for one large blob through regcache in S3 mode (SeaweedFS), on loopback.

    python -m benchmarks.s3_blob --size 256M --runs 3

Starts a distribution registry holding the blob and a SeaweedFS S3 server. Each run uses a new
bucket: a regcache with an empty cache dir times a cold GET (registry → cache → client, verified,
then uploaded to S3 in the background) and a warm GET (local disk); then a second regcache with
an empty cache dir and the same bucket times an S3 hit (S3 → cache → client, verified and copied
to its local disk on the way), and one with --s3-redirect times the same GET answered by a 307
and read from S3 directly. The client reads in 1 MiB pieces and hashes, as containerd does.
"""

from __future__ import annotations

import argparse
import http.client
import os
import time
import urllib.parse

from benchmarks.single_blob import parse_size, timed_get
from tests.peers.images import build_image, push, random_layer
from tests.peers.registry import Registry
from tests.peers.seaweed import SeaweedS3
from tests.support import Regcache


def wait_uploaded(cache: Regcache, timeout: float = 300.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        metrics = cache.metrics()
        if metrics.get('regcache_s3_uploads_total{result="uploaded"}', 0) >= 1 and not metrics.get(
            "regcache_s3_uploads_pending"
        ):
            return time.monotonic() - started
        time.sleep(0.1)
    raise RuntimeError("upload to S3 did not finish")


def redirect_target(port: int, path: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", path)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    if resp.status != 307:
        raise RuntimeError(f"expected a 307, got {resp.status}")
    return resp.getheader("Location") or ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="256M", help="blob size, e.g. 64M, 256M, 1G")
    parser.add_argument("--runs", type=int, default=3, help="runs, each with a new bucket and empty cache dirs")
    args = parser.parse_args()
    size = parse_size(args.size)
    workdir = os.path.abspath(f"/tmp/regcache-bench-s3-{os.getpid()}")
    os.makedirs(workdir)
    layer = random_layer(size)
    image = build_image(os.path.join(workdir, "layout"), [layer], "bench")
    digest = image.layer_digests[0]
    with Registry(os.path.join(workdir, "registry")) as registry, SeaweedS3(os.path.join(workdir, "weed")) as s3:
        push(image, f"{registry.host}/bench/blob:1")
        print(f"blob {digest} {len(layer) / 1e6:.0f} MB")
        env = {
            "AWS_ACCESS_KEY_ID": s3.access_key,
            "AWS_SECRET_ACCESS_KEY": s3.secret_key,
            "AWS_REGION": s3.region,
            "AWS_ENDPOINT_URL_S3": s3.endpoint,
        }
        upstream = ["--upstream", f"{registry.host}={registry.url}", "-l", "warning"]
        path = f"/v2/bench/blob/blobs/{digest}?ns={registry.host}"

        def measure(label: str, port: int, run: int) -> None:
            seconds, got, seen = timed_get(port, path)
            assert got == len(layer) and seen == digest, "wrong bytes"
            print(f"run {run} {label}: {got / seconds / 1e6:8.0f} MB/s ({seconds:.2f} s)")

        for run in range(1, args.runs + 1):
            bucket = s3.bucket(f"bench-{os.getpid()}-{run}")
            filler = Regcache(["-b", bucket, *upstream], env).start()
            try:
                measure("cold", filler.port, run)
                print(f"run {run} upload to S3 finished {wait_uploaded(filler):.2f} s after the client's last byte")
                measure("warm (local disk)", filler.port, run)
            finally:
                filler.stop()
            reader = Regcache(["-b", bucket, *upstream], env).start()
            try:
                measure("S3 hit (empty local tier)", reader.port, run)
            finally:
                reader.stop()
            redirector = Regcache(["-b", bucket, "--s3-redirect", *upstream], env).start()
            try:
                location = redirect_target(redirector.port, path)
                target = urllib.parse.urlsplit(location)
                started = time.perf_counter()
                seconds, got, seen = timed_get(target.port or 80, f"{target.path}?{target.query}")
                assert got == len(layer) and seen == digest, "wrong bytes"
                total = time.perf_counter() - started
                print(f"run {run} S3 redirect (307, then S3): {got / total / 1e6:8.0f} MB/s ({total:.2f} s)")
            finally:
                redirector.stop()
        seconds, got, _ = timed_get(registry.port, f"/v2/bench/blob/blobs/{digest}")
        print(f"direct from the registry: {got / seconds / 1e6:8.0f} MB/s ({seconds:.2f} s)")


if __name__ == "__main__":
    main()
