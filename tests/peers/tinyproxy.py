"""tinyproxy as the HTTP(S) forward proxy regcache may be told to use for upstreams.

Its connection log lets a test prove traffic really went through the proxy (and to where).
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

from tests.peers.binaries import ManagedProcess, Peer, on_exit, require
from tests.peers.net import free_port, wait_for_port

# CONNECT   Nov 28 04:13:00.524 [5503]: Request (file descriptor 5): CONNECT 127.0.0.1:15000 HTTP/1.1
_REQUEST_RE = re.compile(r"Request \(file descriptor \d+\): (\S+) (\S+) HTTP/[\d.]+")


class Tinyproxy(Peer):
    """tinyproxy in the foreground on 127.0.0.1:<free port>.

    Without ConnectPort lines tinyproxy 1.11 allows CONNECT to any port (checked in
    tests/test_peers.py), which loopback registries on random ports need.
    """

    def __init__(self, workdir: Path | str | None = None, *, basic_auth: tuple[str, str] | None = None) -> None:
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="regcache-tinyproxy-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = self.dir / "tinyproxy.log"
        self.stdout_path = self.dir / "tinyproxy.out"
        self.config_path = self.dir / "tinyproxy.conf"
        lines = [
            f"Port {self.port}",
            "Listen 127.0.0.1",
            "Timeout 120",
            "Allow 127.0.0.1",
            f'LogFile "{self.log_path}"',
            "LogLevel Connect",
            "MaxClients 200",
        ]
        if basic_auth:
            lines.append(f"BasicAuth {basic_auth[0]} {basic_auth[1]}")
        self.config_path.write_text("\n".join(lines) + "\n")
        self._proc: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> Tinyproxy:
        proc = ManagedProcess(
            [require("tinyproxy"), "-d", "-c", str(self.config_path)],
            log=self.stdout_path,
            cwd=self.dir,
        )
        proc.start()
        self._proc = proc
        on_exit(self, self.close)
        try:
            deadline = time.monotonic() + timeout
            while not proc.alive() or not self._listening():
                if not proc.alive():
                    raise RuntimeError("tinyproxy exited")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no listener on {self.port}")
                time.sleep(0.01)
        except (TimeoutError, RuntimeError) as e:
            err = proc.failure(f"tinyproxy did not start: {e}", log=self.log_path)
            proc.kill()
            raise err from None
        return self

    def _listening(self) -> bool:
        try:
            wait_for_port("127.0.0.1", self.port, timeout=0.05)
            return True
        except TimeoutError:
            return False

    def requests(self) -> list[str]:
        """'METHOD target' for every request seen, e.g. 'CONNECT 127.0.0.1:5000' or
        'GET http://127.0.0.1:5000/v2/' (plain-HTTP forwarding), oldest first."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [f"{m[1]} {m[2]}" for m in _REQUEST_RE.finditer(text)]

    def connect_log(self) -> list[str]:
        """Same as requests(): CONNECT targets and absolute-URI requests seen."""
        return self.requests()

    def connect_targets(self) -> list[str]:
        """host:port of every CONNECT tunnel opened."""
        return [r.split(" ", 1)[1] for r in self.requests() if r.startswith("CONNECT ")]

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop(grace=1.0)
            self._proc = None
