"""The benchmark scripts keep working (their figures are never asserted here)."""

import json
import re
import subprocess
import sys

from tests.peers.net import clean_env
from tests.support import ROOT

SYSTEMS = ("direct", "regcache-disk", "regcache-s3", "distribution-proxy", "nginx-cache")
SCENARIOS = ("cold", "warm", "concurrent", "three", "manifests", "ctr_cold", "ctr_warm")
KINDS = ("plain", "tls")


def test_single_blob_benchmark_runs_and_reports_cold_and_warm():
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.single_blob", "--size", "4M", "--runs", "1"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=clean_env(),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"run 1 cold: +\d+ MB/s", done.stdout)
    assert re.search(r"run 1 warm: +\d+ MB/s", done.stdout)
    assert "direct from the registry" in done.stdout


def test_s3_blob_benchmark_reports_cold_warm_s3_hit_and_redirect():
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.s3_blob", "--size", "4M", "--runs", "1"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=clean_env(),
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    for label in ("cold", "warm \\(local disk\\)", "S3 hit \\(empty local tier\\)", "S3 redirect"):
        assert re.search(rf"run 1 {label}[^:]*: +\d+ MB/s", done.stdout), (label, done.stdout)
    assert re.search(r"upload to S3 finished [\d.]+ s after", done.stdout)


def test_pull_harness_quick_reports_every_system_and_scenario_for_plain_and_tls_upstreams(tmp_path):
    """`--quick` runs every system through every scenario against both upstream kinds, says why
    for any it skipped, and checks the Core v2 targets for each kind they apply to."""
    out = tmp_path / "quick.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.pull", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=clean_env(),
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())

    assert report["meta"]["upstream_kinds"] == list(KINDS)
    assert list(report["systems"]) == list(SYSTEMS)
    assert list(report["scenarios"]) == list(SCENARIOS)
    assert list(report["upstreams"]) == list(KINDS)
    assert report["upstreams"]["plain"]["url"].startswith("http://")
    assert report["upstreams"]["tls"]["url"].startswith("https://")
    for kind, upstream in report["upstreams"].items():
        for name, status in upstream["systems"].items():
            assert status["status"] in ("ok", "skipped"), (kind, name, status)
            if status["status"] == "skipped":
                assert status["reason"], (kind, name)
        # What the harness is for cannot be skipped: the baseline and regcache itself.
        assert upstream["systems"]["direct"]["status"] == "ok", kind
        assert upstream["systems"]["regcache-disk"]["status"] == "ok", kind

        for key, scenario in upstream["scenarios"].items():
            for name in SYSTEMS:
                entry = scenario["systems"][name]
                if "skipped" in entry:
                    assert entry["skipped"], (kind, key, name)
                    continue
                assert entry["median"] > 0, (kind, key, name)
                assert entry["ratio_to_direct"] > 0, (kind, key, name)
                assert len(entry["runs"]) == 1
                assert entry["medians"]["cpu_s"] >= 0 and entry["medians"]["peak_rss_mib"] > 0
            if "skipped" not in scenario["systems"]["direct"]:
                assert scenario["systems"]["direct"]["ratio_to_direct"] == 1.0
            if key != "ctr_cold" and key != "ctr_warm":  # containerd needs root; the rest must run
                assert "skipped" not in scenario["systems"]["regcache-disk"], (kind, key)

        regcache = {k: s["systems"]["regcache-disk"]["medians"] for k, s in upstream["scenarios"].items()}
        # The cold blob came from this upstream (over verified TLS for "tls"), once.
        assert regcache["cold"]["upstream_gets"] == 1, kind
        # One upstream download for all concurrent clients of a cold blob; none for warm hits.
        assert regcache["concurrent"]["upstream_gets"] == 1, kind
        assert regcache["warm"]["upstream_gets"] == 0, kind
        # Three different blobs at once: each fetched once, and the figures the target needs.
        assert regcache["three"]["upstream_gets"] == 3, kind
        for figure in ("aggregate_mb_per_s", "wall_s", "cpu_s_per_gib", "peak_rss_mib"):
            assert regcache["three"][figure] >= 0, (kind, figure)

    targets = report["targets"]
    assert {t["system"] for t in targets} == {"regcache-disk"}
    by_kind = {kind: {t["target"] for t in targets if t["upstream"] == kind} for kind in KINDS}
    assert "cold server CPU <= 1.5 s per GiB" in by_kind["plain"] - by_kind["tls"]
    assert "cold MB/s >= 1.1x nginx proxy_cache" in by_kind["tls"] - by_kind["plain"]
    assert "3 cold blobs: agg MB/s >= 1.0x nginx proxy_cache" in by_kind["plain"] & by_kind["tls"]
    for t in targets:
        assert t["met"] in (True, False, None), t
        anchor_ran = t["anchor_system"] is None or t["anchor"] is not None
        assert (t["met"] is not None) == (t["value"] is not None and anchor_ran), t
        if t["target"] == "concurrent: exactly 1 upstream GET":
            assert t["met"] is True, t

    for title in ("cold single client", "warm single client", "concurrent cold clients", "three different cold blobs"):
        assert title in done.stdout
    assert "manifest GETs" in done.stdout and "ctr image pull" in done.stdout
    for kind in KINDS:
        assert re.search(rf"^  (met|MISSED) +{kind} +cold MB/s >= ", done.stdout, re.M), kind
    png = out.with_suffix(".png")  # matplotlib comes with scripts/install-test-deps.sh
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", done.stdout[-500:]
