"""Running regcache as its users do (`python -m regcache ...`) and talking HTTP to it.

Integration tests start the real process on a free port with its own cache dir, so what they
assert is what an operator would see: status lines, headers, bytes, metrics, log lines.
"""

from __future__ import annotations

import http.client
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from tests.peers.binaries import ManagedProcess, tail
from tests.peers.net import clean_env, free_port, wait_for_http

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


def request(url: str, method: str = "GET", headers: dict[str, str] | None = None, timeout: float = 60.0) -> Response:
    """One HTTP request without proxies, redirects or retries: exactly what the server said."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return Response(resp.status, resp.headers, body)
    finally:
        conn.close()


@dataclass
class Regcache:
    """A regcache process; `args` are its command line after `python -m regcache`."""

    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cache_dir: Path | None = None
    port: int = 0
    proc: ManagedProcess | None = None

    def __post_init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="regcache-test-"))
        if self.cache_dir is None:
            self.cache_dir = self.workdir / "cache"
        self.port = self.port or free_port()
        self.log_path = self.workdir / "regcache.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> Regcache:
        argv = [
            sys.executable,
            "-m",
            "regcache",
            "--host",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-d",
            str(self.cache_dir),
        ]
        self.proc = ManagedProcess([*argv, *self.args], log=self.log_path, env=clean_env(**self.env), cwd=ROOT)
        self.proc.start()
        try:
            wait_for_http(f"{self.url}/healthz", timeout=timeout, alive=self.proc.alive)
        except Exception as exc:
            raise RuntimeError(f"regcache did not start: {exc}\n{tail(self.log_path)}") from exc
        return self

    def stop(self, sig: int = signal.SIGTERM, grace: float = 30.0) -> int | None:
        """Signal and wait; returns the exit code (None if it had to be killed)."""
        if self.proc is None or self.proc.proc is None:
            return None
        popen = self.proc.proc
        if popen.poll() is None:
            popen.send_signal(sig)
            try:
                popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return None
        code = popen.returncode
        self.proc.kill()
        return code

    def kill9(self) -> None:
        if self.proc is not None:
            self.proc.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # --- the API as containerd calls it -------------------------------------------------------
    def get(self, path: str, ns: str | None, method: str = "GET", headers: dict[str, str] | None = None) -> Response:
        query = f"?ns={urllib.parse.quote(ns, safe=':[]')}" if ns is not None else ""
        return request(f"{self.url}{path}{query}", method=method, headers=headers)

    def manifest(
        self, ns: str, repo: str, reference: str, method: str = "GET", accept: str | None = None, **headers: str
    ) -> Response:
        sent = {"Accept": accept or ALL_MANIFEST_TYPES, **{k.replace("_", "-"): v for k, v in headers.items()}}
        return self.get(f"/v2/{repo}/manifests/{reference}", ns, method, sent)

    def blob(self, ns: str, repo: str, digest: str, method: str = "GET", **headers: str) -> Response:
        sent = {k.replace("_", "-"): v for k, v in headers.items()}
        return self.get(f"/v2/{repo}/blobs/{digest}", ns, method, sent)

    def metrics(self) -> dict[str, float]:
        """Samples by their full name with labels, e.g. 'containerd_cache_total{result="hit"}'."""
        text = request(f"{self.url}/metrics").body.decode()
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def cache_count(self, result: str) -> float:
        return self.metrics().get(f'containerd_cache_total{{result="{result}"}}', 0.0)

    def stored_files(self, top: str = "") -> list[Path]:
        base = self.cache_dir / top if top else self.cache_dir
        return sorted(p for p in base.rglob("*") if p.is_file()) if base.exists() else []

    def staging_files(self) -> list[Path]:
        return self.stored_files("staging")


ALL_MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)


def read_blob(
    cache: Regcache, ns: str, repo: str, digest: str, headers: dict[str, str] | None = None, timeout: float = 60.0
) -> tuple[int, bytes, bool]:
    """(status, body, complete): complete is False when the connection ended before Content-Length."""
    conn = http.client.HTTPConnection("127.0.0.1", cache.port, timeout=timeout)
    try:
        conn.request("GET", f"/v2/{repo}/blobs/{digest}?ns={urllib.parse.quote(ns)}", headers=headers or {})
        resp = conn.getresponse()
        try:
            return resp.status, resp.read(), True
        except http.client.IncompleteRead as exc:
            return resp.status, exc.partial, False
    finally:
        conn.close()


def blob_path(cache_dir: Path, digest: str) -> Path:
    algorithm, encoded = digest.split(":", 1)
    return cache_dir / "blobs" / algorithm / encoded[:2] / encoded


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def log_lines(text: str, pattern: str) -> list[str]:
    return [line for line in text.splitlines() if re.search(pattern, line)]


def stored_blob(cache_dir: Path, digest: str, timeout: float = 10.0) -> bytes:
    """The stored bytes of a blob, once stored: a download is committed (fsync, rename) just
    after its client got the last byte, so a test that looks at once may need to wait a moment."""
    path = blob_path(cache_dir, digest)
    if not wait_until(path.exists, timeout=timeout):
        raise AssertionError(f"{digest} was not stored in {cache_dir}")
    return path.read_bytes()
