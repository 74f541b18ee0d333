"""The benchmark scripts keep working (their figures are never asserted here)."""

import json
import re
import subprocess
import sys

from tests.peers.net import clean_env
from tests.support import ROOT

SYSTEMS = ("direct", "regcache-disk", "regcache-s3", "distribution-proxy", "nginx-cache")
SCENARIOS = ("cold", "warm", "concurrent", "manifests", "ctr_cold", "ctr_warm")


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


def test_pull_harness_quick_reports_every_system_and_scenario(tmp_path):
    """`--quick` runs every system through every scenario and says why for any it skipped."""
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

    assert list(report["systems"]) == list(SYSTEMS)
    for name, status in report["systems"].items():
        assert status["status"] in ("ok", "skipped"), (name, status)
        if status["status"] == "skipped":
            assert status["reason"], name
    # What the harness is for cannot be skipped: the baseline and regcache itself.
    assert report["systems"]["direct"]["status"] == "ok"
    assert report["systems"]["regcache-disk"]["status"] == "ok"

    assert list(report["scenarios"]) == list(SCENARIOS)
    for key, scenario in report["scenarios"].items():
        for name in SYSTEMS:
            entry = scenario["systems"][name]
            if "skipped" in entry:
                assert entry["skipped"], (key, name)
                continue
            assert entry["median"] > 0, (key, name)
            assert entry["ratio_to_direct"] > 0, (key, name)
            assert len(entry["runs"]) == 1
            assert entry["medians"]["cpu_s"] >= 0 and entry["medians"]["peak_rss_mib"] > 0
        if "skipped" not in scenario["systems"]["direct"]:
            assert scenario["systems"]["direct"]["ratio_to_direct"] == 1.0
        if key != "ctr_cold" and key != "ctr_warm":  # containerd needs root; the rest must run
            assert "skipped" not in scenario["systems"]["regcache-disk"], key

    # One upstream download for all concurrent clients of a cold blob; none for warm hits.
    regcache = {k: report["scenarios"][k]["systems"]["regcache-disk"]["medians"] for k in ("concurrent", "warm")}
    assert regcache["concurrent"]["upstream_gets"] == 1
    assert regcache["warm"]["upstream_gets"] == 0

    for title in ("cold single client", "warm single client", "concurrent cold clients", "manifest GETs", "ctr"):
        assert title in done.stdout
    png = out.with_suffix(".png")  # matplotlib comes with scripts/install-test-deps.sh
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", done.stdout[-500:]
