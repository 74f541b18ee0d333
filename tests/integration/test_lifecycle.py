"""Start, stop and crash as an operator meets them: SIGTERM drains, kill -9 leaves nothing served."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse

import pytest

from regcache import __version__
from tests.fakes import digest_of, serve, serve_throttled, stall_after
from tests.peers.net import clean_env
from tests.support import Regcache, blob_path, log_lines, request, stored_blob, wait_until

REPO = "life/app"


def test_sigterm_lets_a_response_in_flight_finish_then_exits_0(make_regcache, fake):
    data = os.urandom(8 * 1024 * 1024)
    digest = digest_of(data)
    fake.routes[f"/v2/{REPO}/blobs/{digest}"] = serve_throttled(data, seconds=2.0, pieces=20)
    cache = make_regcache(*fake.upstream_arg())
    conn = http.client.HTTPConnection("127.0.0.1", cache.port, timeout=30)
    conn.request("GET", f"/v2/{REPO}/blobs/{digest}?ns={urllib.parse.quote(fake.ns)}")
    resp = conn.getresponse()
    first = resp.read(1024)
    cache.proc.proc.send_signal(signal.SIGTERM)
    # New connections are refused while the one in flight completes.
    assert wait_until(lambda: _refused(cache.port), timeout=5)
    body = first + resp.read()
    assert body == data
    assert cache.proc.proc.wait(timeout=30) == 0
    assert "shutting down" in cache.log()


def _refused(port: int) -> bool:
    try:
        request(f"http://127.0.0.1:{port}/healthz", timeout=1)
        return False
    except OSError:
        return True


def test_kill_9_mid_download_leaves_nothing_served_and_the_next_pull_works(make_regcache, fake, scratch):
    data = os.urandom(4 * 1024 * 1024)
    digest = digest_of(data)
    release = threading.Event()
    fake.routes[f"/v2/{REPO}/blobs/{digest}"] = stall_after(data, 1024 * 1024, release)
    cache_dir = scratch / "cache"
    first = make_regcache(*fake.upstream_arg(), cache_dir=cache_dir)
    conn = http.client.HTTPConnection("127.0.0.1", first.port, timeout=30)
    conn.request("GET", f"/v2/{REPO}/blobs/{digest}?ns={urllib.parse.quote(fake.ns)}")
    resp = conn.getresponse()
    resp.read(512 * 1024)
    assert wait_until(lambda: any(p.stat().st_size > 0 for p in first.staging_files()), timeout=5)
    first.kill9()
    release.set()
    conn.close()
    assert first.staging_files(), "the crash left a partial download behind"
    assert not blob_path(cache_dir, digest).exists()

    fake.routes[f"/v2/{REPO}/blobs/{digest}"] = serve(data)
    second = make_regcache(*fake.upstream_arg(), cache_dir=cache_dir)
    assert second.staging_files() == [], "start-up clears interrupted downloads"
    assert "removed 1 interrupted downloads" in second.log()
    resp = second.blob(fake.ns, REPO, digest)
    assert resp.status == 200 and resp.body == data
    assert stored_blob(cache_dir, digest) == data


def test_a_blob_removed_from_outside_is_fetched_again(make_regcache, fake):
    data = os.urandom(256 * 1024)
    digest = digest_of(data)
    fake.routes[f"/v2/{REPO}/blobs/{digest}"] = serve(data)
    cache = make_regcache(*fake.upstream_arg())
    assert cache.blob(fake.ns, REPO, digest).body == data
    assert stored_blob(cache.cache_dir, digest) == data
    blob_path(cache.cache_dir, digest).unlink()  # an operator's clean-up job
    again = cache.blob(fake.ns, REPO, digest)
    assert again.status == 200 and again.body == data
    assert fake.count(f"/v2/{REPO}/blobs/{digest}") == 2


def test_unknown_option_and_bad_values_stop_start_up_with_a_message(scratch):
    for args, words in [
        (["--no-such-option"], "--no-such-option"),
        (["-m", "maybe"], "--cache-manifests"),
        (["--upstream", "nonsense"], "NS=URL"),
        (["-b", "Not_A_Bucket"], "--bucket"),
        (["--local-cache-size", "lots"], "--local-cache-size"),
        (["-f", str(scratch / "missing.yaml")], "--creds-file"),
    ]:
        proc = Regcache(args, cache_dir=scratch / "c")
        code = _run_to_exit(proc)
        assert code == 2, (args, proc.log())
        assert words in proc.log() and "Traceback" not in proc.log()


def _run_to_exit(instance: Regcache) -> int:
    argv = [sys.executable, "-m", "regcache", "-p", str(instance.port), "-d", str(instance.cache_dir), *instance.args]
    done = subprocess.run(argv, capture_output=True, text=True, env=clean_env(), timeout=30)
    instance.log_path.write_text(done.stdout + done.stderr)
    return done.returncode


def test_version():
    out = subprocess.run([sys.executable, "-m", "regcache", "--version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and __version__ in out.stdout


def test_broken_cache_storage_passes_cold_blobs_through_and_keeps_serving_what_it_has(make_regcache, fake):
    cached = os.urandom(64 * 1024)
    cold = os.urandom(3 * 1024 * 1024)
    manifest = b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "layers": []}'
    for data in (cached, cold):
        fake.routes[f"/v2/{REPO}/blobs/{digest_of(data)}"] = serve(data)
    fake.routes[f"/v2/{REPO}/manifests/1.0"] = serve(manifest, "application/vnd.oci.image.manifest.v1+json")
    cache = make_regcache(*fake.upstream_arg())
    assert cache.blob(fake.ns, REPO, digest_of(cached)).body == cached
    assert stored_blob(cache.cache_dir, digest_of(cached)) == cached
    assert cache.get("/readyz", None).status == 200
    # The cache dir stops taking writes (a full or read-only disk looks the same to a writer).
    staging = cache.cache_dir / "staging"
    staging.rename(cache.cache_dir / "staging.moved")
    staging.write_text("not a directory")
    for _ in range(3):
        resp = cache.blob(fake.ns, REPO, digest_of(cold))
        # The pull goes on, streamed through from the registry, and nothing is stored.
        assert resp.status == 200 and resp.body == cold
        assert resp.header("Docker-Content-Digest") == digest_of(cold)
    assert not blob_path(cache.cache_dir, digest_of(cold)).exists()
    assert cache.blob(fake.ns, REPO, digest_of(cached)).body == cached
    # Manifests are fetched whole, so they are still served, just not stored.
    got = cache.manifest(fake.ns, REPO, "1.0")
    assert got.status == 200 and got.body == manifest
    samples = cache.metrics()
    assert samples["regcache_storage_passthrough_total"] == 3
    assert samples['regcache_tier_errors_total{op="create",tier="staging"}'] == 3
    ready = cache.get("/readyz", None)
    assert ready.status == 503 and "not writable" in json.loads(ready.body)["errors"][0]["message"]
    # One log line a minute, however many pulls go around the cache.
    assert len(log_lines(cache.log(), r"WARNING .*cache storage unavailable")) == 1
    assert not log_lines(cache.log(), r"WARNING .*(cannot stage|fill blobs/)"), "storage trouble logged per blob"


@pytest.fixture
def small_disk(scratch):
    """A 4 MiB tmpfs as the cache dir: a full disk, for real."""
    mountpoint = scratch / "small"
    mountpoint.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mountpoint)], capture_output=True)
    if done.returncode != 0:
        message = f"cannot mount a tmpfs (root needed): {done.stderr.decode().strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    yield mountpoint
    subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def test_a_blob_larger_than_the_free_disk_is_passed_through_and_readyz_says_so(make_regcache, fake, small_disk):
    big = os.urandom(8 * 1024 * 1024)
    small = os.urandom(512 * 1024)
    for data in (big, small):
        fake.routes[f"/v2/{REPO}/blobs/{digest_of(data)}"] = serve(data)
    cache = make_regcache(*fake.upstream_arg(), cache_dir=small_disk)
    resp = cache.blob(fake.ns, REPO, digest_of(big))
    # Found when the space is reserved, before the answer starts: the pull goes on uncached.
    assert resp.status == 200 and resp.body == big
    assert wait_until(lambda: cache.staging_files() == [], timeout=5), "nothing partial is left"
    assert not blob_path(small_disk, digest_of(big)).exists()
    ready = cache.get("/readyz", None)
    assert ready.status == 503
    assert "No space left" in json.loads(ready.body)["errors"][0]["message"]
    # What fits is still cached.
    assert cache.blob(fake.ns, REPO, digest_of(small)).body == small
    assert stored_blob(small_disk, digest_of(small)) == small
    samples = cache.metrics()
    assert samples['regcache_tier_errors_total{op="reserve",tier="staging"}'] == 1
    assert samples["regcache_storage_passthrough_total"] == 1
    assert log_lines(cache.log(), r"WARNING .*cache storage unavailable .*No space left")


def test_a_slow_client_of_a_passed_through_blob_holds_bounded_memory(make_regcache, fake, small_disk):
    """The registry is paused, not buffered, while the client reads slowly: what regcache holds
    is a few 1 MiB chunks in flight, whatever the size of the blob."""
    big = os.urandom(64 * 1024 * 1024)
    fake.routes[f"/v2/{REPO}/blobs/{digest_of(big)}"] = serve(big)
    cache = make_regcache(*fake.upstream_arg(), cache_dir=small_disk)
    cache.blob(fake.ns, REPO, digest_of(b"warm-up"))  # imports and first-request allocations
    before = _rss_kib(cache.proc.proc.pid)
    conn = http.client.HTTPConnection("127.0.0.1", cache.port, timeout=30)
    conn.request("GET", f"/v2/{REPO}/blobs/{digest_of(big)}?ns={urllib.parse.quote(fake.ns)}")
    resp = conn.getresponse()
    assert resp.status == 200
    body = resp.read(256 * 1024)
    time.sleep(1.0)  # the client stalls; the registry could send everything in this time
    grown = _rss_kib(cache.proc.proc.pid) - before
    body += resp.read()
    conn.close()
    assert body == big
    # About 9 MiB on this machine (chunks in flight, curl's and the first big transfer's
    # allocations); a buffering pass-through would hold most of the 64 MiB.
    assert grown < 16 * 1024, f"regcache grew by {grown} KiB while a client stalled on a 64 MiB pass-through"


def test_a_passed_through_blob_that_does_not_match_its_digest_never_looks_complete(make_regcache, fake, small_disk):
    real = os.urandom(8 * 1024 * 1024)
    lie = bytearray(real)
    lie[-1] ^= 0xFF  # wrong in its very last byte
    fake.routes[f"/v2/{REPO}/blobs/{digest_of(real)}"] = serve(bytes(lie))
    cache = make_regcache(*fake.upstream_arg(), cache_dir=small_disk)
    conn = http.client.HTTPConnection("127.0.0.1", cache.port, timeout=30)
    conn.request("GET", f"/v2/{REPO}/blobs/{digest_of(real)}?ns={urllib.parse.quote(fake.ns)}")
    resp = conn.getresponse()
    assert resp.status == 200
    with pytest.raises(http.client.IncompleteRead) as info:
        resp.read()
    conn.close()
    assert len(info.value.partial) == len(real) - 1, "all but the held-back last byte"
    assert cache.metrics()[f'regcache_verification_failures_total{{reason="digest",registry="{fake.ns}"}}'] == 1


def _rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_sigterm_waits_for_a_pull_even_after_a_malformed_request(make_regcache, fake):
    data = os.urandom(4 * 1024 * 1024)
    digest = digest_of(data)
    fake.routes[f"/v2/{REPO}/blobs/{digest}"] = serve_throttled(data, seconds=1.5, pieces=15)
    cache = make_regcache(*fake.upstream_arg())
    conn = http.client.HTTPConnection("127.0.0.1", cache.port, timeout=30)
    conn.request("GET", f"/v2/{REPO}/blobs/{digest}?ns={urllib.parse.quote(fake.ns)}")
    resp = conn.getresponse()
    first = resp.read(1024)
    # Requests refused before any handler ran must not confuse the count of requests in flight.
    assert cache.get("/v2/%ff/manifests/x", fake.ns).status == 400
    assert cache.get("/v2/", None, method="OPTIONS").status == 405
    cache.proc.proc.send_signal(signal.SIGTERM)
    assert first + resp.read() == data
    assert cache.proc.proc.wait(timeout=30) == 0


def test_creds_file_readable_by_everyone_is_warned_about_and_a_malformed_one_stops_start_up(make_regcache, scratch):
    creds = scratch / "creds.yaml"
    creds.write_text("ghcr.io:\n  username: u\n  password: secret-pw-1\n")
    creds.chmod(0o644)
    cache = make_regcache("-f", str(creds))
    [line] = log_lines(cache.log(), r"WARNING .*creds-file")
    assert str(creds) in line and "readable by every user" in line and "secret-pw-1" not in cache.log()
    creds.chmod(0o600)
    quiet = make_regcache("-f", str(creds))
    assert not log_lines(quiet.log(), r"creds-file")

    creds.write_text("ghcr.io:\n  username: u\n  password: secret-pw-1\nquay.io:\n  username: v\n")
    broken = Regcache(["-f", str(creds)], cache_dir=scratch / "c")
    assert _run_to_exit(broken) == 2
    assert "line 4: entry 'quay.io' has no password" in broken.log()
    assert "Traceback" not in broken.log() and "secret-pw-1" not in broken.log()


def test_a_tag_whose_manifest_was_removed_from_outside_is_fetched_again(make_regcache, fake):
    manifest = b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "layers": []}'
    fake.routes[f"/v2/{REPO}/manifests/1.0"] = serve(manifest, "application/vnd.oci.image.manifest.v1+json")
    cache = make_regcache(*fake.upstream_arg())
    assert cache.manifest(fake.ns, REPO, "1.0").body == manifest
    assert cache.manifest(fake.ns, REPO, "1.0").body == manifest
    assert fake.count(f"/v2/{REPO}/manifests/1.0") == 1
    for path in cache.stored_files("manifests"):  # `find -delete` by a clean-up sidecar
        path.unlink()
    assert cache.stored_files("tags"), "the tag pointer is still there"
    again = cache.manifest(fake.ns, REPO, "1.0")
    assert again.status == 200 and again.body == manifest
    assert fake.count(f"/v2/{REPO}/manifests/1.0") == 2


def test_a_kubernetes_service_link_in_regcache_port_does_not_stop_it_starting(tmp_path):
    """A Service named `regcache` makes Kubernetes set REGCACHE_PORT=tcp://<ip>:<port> in every
    pod of its namespace; the config file's port must hold (the chart also turns links off)."""
    from tests.peers.binaries import ManagedProcess
    from tests.peers.net import free_port, wait_for_http
    from tests.support import ROOT

    port = free_port()
    config = tmp_path / "regcache.yaml"
    config.write_text(f"host: 127.0.0.1\nport: {port}\ncache-dir: {tmp_path / 'cache'}\n")
    env = clean_env(REGCACHE_PORT="tcp://10.96.0.12:3000", REGCACHE_SERVICE_HOST="10.96.0.12")
    proc = ManagedProcess(
        [sys.executable, "-m", "regcache", "-c", str(config)], log=tmp_path / "log", env=env, cwd=ROOT
    )
    proc.start()
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout=20, alive=proc.alive)
        assert wait_until(lambda: "ignoring REGCACHE_PORT=tcp://10.96.0.12:3000" in (tmp_path / "log").read_text())
    finally:
        proc.stop()


def test_metrics_tell_the_cache_volumes_size_and_free_space(cache):
    """What the disk-nearly-full alert reads: the volume's numbers as df tells them."""
    stat = os.statvfs(cache.cache_dir)
    found = cache.metrics()
    assert found['regcache_cache_volume_bytes{state="size"}'] == stat.f_blocks * stat.f_frsize
    free = found['regcache_cache_volume_bytes{state="free"}']
    assert abs(free - stat.f_bavail * stat.f_frsize) < 256 * 2**20  # other writers on the machine
    assert 0 < free <= found['regcache_cache_volume_bytes{state="size"}']
