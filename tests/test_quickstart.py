"""The README's quick start, run the way a new user runs it: in a fresh copy of the repository, with
the system's own python3 (Debian 12's, where PEP 668 refuses `pip install .`), an environment
without any virtualenv, PYTHONPATH or REGCACHE_* settings, and nothing installed beforehand. The
command must make its own virtual environment, install regcache into it and serve /healthz.

The first run installs regcache's dependencies from PyPI (pip's own cache in $HOME makes later
runs of this test quicker); only when PyPI cannot be reached is that a skip.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers.net import free_port
from tests.support import ROOT, request

SYSTEM_PYTHON = Path("/usr/bin/python3")
# What a copy of the repository leaves out: what a fresh clone would not have.
NOT_IN_A_CLONE = shutil.ignore_patterns(".git", ".venv", "__pycache__", ".ruff_cache", ".pytest_cache", "*.egg-info")


def quick_start_command() -> str:
    """The first command of the README's "Quick start": the one that runs the cache."""
    section = re.search(r"^## Quick start\n(.*?)^## ", (ROOT / "README.md").read_text(), re.S | re.M)
    assert section, "README.md has no '## Quick start' section"
    block = re.search(r"```sh\n(.*?)```", section.group(1), re.S)
    assert block, "the quick start has no ```sh block"
    (command,) = [line for line in block.group(1).splitlines() if line.strip()]
    return command


def new_user_env(port: int, cache_dir: Path) -> dict[str, str]:
    """A login shell's environment: system PATH first, the user's HOME (and so pip's cache), no
    proxies or Python settings; the port and cache dir through regcache's own variables."""
    return {
        "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "REGCACHE_HOST": "127.0.0.1",
        "REGCACHE_PORT": str(port),
        "REGCACHE_CACHE_DIR": str(cache_dir),
    }


def pypi_reachable() -> bool:
    try:
        with socket.create_connection(("pypi.org", 443), timeout=5):
            return True
    except OSError:
        return False


def healthz(port: int) -> int | None:
    try:
        return request(f"http://127.0.0.1:{port}/healthz", timeout=5).status
    except OSError:
        return None


def start_and_check_healthz(command: str, checkout: Path, tmp_path: Path, deadline_s: float) -> str:
    """Run `command` in `checkout` until /healthz answers, then stop it with SIGTERM; its output."""
    port = free_port()
    log = tmp_path / f"run-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["bash", "-c", command],
            cwd=checkout,
            env=new_user_env(port, tmp_path / "cache"),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + deadline_s
            while healthz(port) != 200:
                if proc.poll() is not None:
                    output = log.read_text(errors="replace")
                    if "pip install failed" in output and not pypi_reachable():
                        pytest.skip("PyPI is unreachable: the quick start's first run installs regcache's dependencies")
                    pytest.fail(f"{command!r} exited {proc.returncode} before /healthz answered:\n{output}")
                assert time.monotonic() < deadline, f"no /healthz after {deadline_s}s:\n{log.read_text()}"
                time.sleep(0.5)
            os.killpg(proc.pid, signal.SIGTERM)
            assert proc.wait(timeout=60) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return log.read_text(errors="replace")


@pytest.mark.slow
def test_quick_start_runs_regcache_from_its_own_venv_with_the_system_python(tmp_path: Path) -> None:
    if not SYSTEM_PYTHON.is_file():
        pytest.skip("no system /usr/bin/python3 (the quick start is for Debian and Ubuntu)")
    command = quick_start_command()
    assert command == "./scripts/run.sh", "the test runs the README's quick start command: update one or the other"
    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT, checkout, ignore=NOT_IN_A_CLONE, symlinks=True)
    externally_managed = subprocess.run(
        [str(SYSTEM_PYTHON), "-m", "pip", "install", "--dry-run", "--no-deps", "."],
        cwd=checkout,
        env=new_user_env(0, tmp_path),
        capture_output=True,
        text=True,
    )
    assert externally_managed.returncode != 0, "this python3 lets pip install into the system: not a stock Debian"

    first = start_and_check_healthz(command, checkout, tmp_path, deadline_s=600)
    assert "making a virtual environment in .venv" in first and "installing regcache" in first
    assert "regcache listening on 127.0.0.1:" in first
    venv_python = checkout / ".venv" / "bin" / "python"
    assert Path(os.path.realpath(venv_python)).name.startswith("python3")
    where = subprocess.run(
        [str(venv_python), "-c", "import regcache, tornado; print(regcache.__file__, tornado.__file__)"],
        cwd=tmp_path,  # not the checkout: the venv itself must find regcache there
        env=new_user_env(0, tmp_path),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert where[0] == str(checkout / "regcache" / "__init__.py"), "regcache runs from the checkout"
    assert where[1].startswith(str(checkout / ".venv")), "its dependencies live in .venv, not in the system"

    second = start_and_check_healthz(command, checkout, tmp_path, deadline_s=120)
    assert "installing" not in second and "making a virtual environment" not in second, second


@pytest.fixture
def world_readable_tmp() -> Iterator[Path]:
    """A scratch dir another user can enter (pytest's tmp_path is private to this one)."""
    path = Path(tempfile.mkdtemp(prefix="regcache-quickstart-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_without_venv_support_it_names_the_package_to_install(world_readable_tmp: Path) -> None:
    """Debian's python3 has no ensurepip until python3.X-venv is installed: the command says so and
    makes nothing (as root it would apt-get install the package, so this runs as nobody)."""
    if not SYSTEM_PYTHON.is_file():
        pytest.skip("no system /usr/bin/python3")
    tmp_path = world_readable_tmp
    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("setpriv (util-linux) is needed to run the command as a non-root user")
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    # A python3 like Debian's without python3.X-venv: the same interpreter, no ensurepip module.
    fake = tmp_path / "bin"
    (tmp_path / "shadow" / "ensurepip").mkdir(parents=True)
    (tmp_path / "shadow" / "ensurepip" / "__init__.py").write_text("raise ImportError('no ensurepip')\n")
    fake.mkdir()
    shim = fake / "python3"
    shim.write_text(f'#!/bin/sh\nPYTHONPATH={shlex.quote(str(tmp_path / "shadow"))} exec {SYSTEM_PYTHON} "$@"\n')
    shim.chmod(0o755)
    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT, checkout, ignore=NOT_IN_A_CLONE, symlinks=True)
    for path in [tmp_path, *tmp_path.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o005)
    version = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    env = new_user_env(free_port(), tmp_path / "cache") | {"PATH": f"{fake}:/usr/bin:/bin", "HOME": "/nonexistent"}
    done = subprocess.run(
        [*prefix, "./scripts/run.sh"], cwd=checkout, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.strip() == (
        "run.sh: python3 cannot make a virtual environment (no ensurepip): "
        f"sudo apt-get install python{version}-venv, then run ./scripts/run.sh again"
    )
    assert not (checkout / ".venv").exists()
