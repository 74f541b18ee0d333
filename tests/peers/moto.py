"""moto's server mode as the stand-in for Amazon ECR's API (and STS, for IRSA's web identity).

AWS cannot be reached from the tests. moto answers GetAuthorizationToken with a deterministic
token: base64 of `AWS:<registry id>-auth-token` (the caller's account, 123456789012, when no
registry id is asked for), dated 2015-01-01, i.e. already expired. A distribution registry whose
htpasswd holds exactly that user and password (`ecr_credentials`) accepts only a client that got
the token from this server. `AssumeRoleWithWebIdentity` takes any token file, as IRSA needs.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import pytest

from tests.peers.binaries import ManagedProcess, Peer, on_exit
from tests.peers.net import clean_env, free_port, wait_for_port

DEFAULT_ACCOUNT = "123456789012"


def ecr_credentials(registry_id: str = DEFAULT_ACCOUNT) -> tuple[str, str]:
    """The user and password moto's GetAuthorizationToken encodes for a registry id."""
    return "AWS", f"{registry_id}-auth-token"


class MotoServer(Peer):
    """`moto_server` on 127.0.0.1:<free port>; every AWS service on one endpoint."""

    def __init__(self, workdir: Path | str | None = None) -> None:
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="regcache-moto-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = self.dir / "moto.log"
        self._proc: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> MotoServer:
        if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
            msg = (
                "moto's server mode is not installed: pip install 'moto[server]' (or run scripts/install-test-deps.sh)"
            )
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(msg)
            pytest.skip(msg)
        argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        proc = ManagedProcess(argv, log=self.log_path, env=clean_env())
        proc.start()
        self._proc = proc
        on_exit(self, self.close)
        try:
            wait_for_port("127.0.0.1", self.port, timeout)
        except TimeoutError as e:
            err = proc.failure(f"moto_server did not start: {e}")
            proc.kill()
            raise err from None
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop(grace=2.0)
            self._proc = None

    def api_calls(self) -> int:
        """Requests moto answered (its werkzeug access log: one line per call)."""
        try:
            return self.log_path.read_text(errors="replace").count('"POST / HTTP/1.1"')
        except FileNotFoundError:
            return 0
