"""The benchmark scripts keep working (their figures are never asserted here)."""

import re
import subprocess
import sys

from tests.peers.net import clean_env
from tests.support import ROOT


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
