"""A real CNCF distribution registry (docker-registry 2.8) as the upstream in tests.

Options cover what regcache must cope with: Basic auth (htpasswd), Bearer token auth, TLS,
S3 storage that answers blob GETs with a 307 to a presigned URL, and pull-through proxy mode.
The access log (Apache combined format, on the registry's stdout) is parsed so tests can
count exactly what reached the upstream.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.peers.binaries import ManagedProcess, Peer, on_exit, require
from tests.peers.net import clean_env, free_port, http_status, wait_for_http


@dataclass(frozen=True)
class TokenAuth:
    """distribution's `auth: token` settings (see tokenserver.TokenServer.auth())."""

    realm: str
    service: str
    issuer: str
    rootcertbundle_path: Path | str


@dataclass(frozen=True)
class S3Storage:
    """distribution's `storage: s3` settings (see seaweed.SeaweedS3.storage())."""

    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    rootdirectory: str = ""


@dataclass(frozen=True)
class AccessLogEntry:
    """One line of the registry's access log."""

    method: str
    path: str
    query: str
    status: int
    size: int
    user_agent: str
    remote: str


# 127.0.0.1 - - [28/Nov/2026:04:07:05 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "curl/7.88.1"
_ACCESS_RE = re.compile(
    r'^(?P<remote>\S+) \S+ \S+ \[[^\]]*\] "(?P<method>\S+) (?P<uri>\S+) [^"]*" '
    r'(?P<status>\d{3}) (?P<size>\S+) "[^"]*" "(?P<ua>[^"]*)"'
)
_BARRIER_UA = "regcache-peers-barrier"


class Registry(Peer):
    """docker-registry on 127.0.0.1:<free port>; stop() and start() keep port and storage."""

    def __init__(
        self,
        workdir: Path | str | None = None,
        *,
        htpasswd: tuple[str, str] | None = None,
        token: TokenAuth | None = None,
        tls: tuple[Path | str, Path | str] | None = None,
        s3: S3Storage | None = None,
        proxy_remote: str | None = None,
        proxy_creds: tuple[str, str] | None = None,
        port: int | None = None,
        realm: str = "regcache-test",
    ) -> None:
        if htpasswd and token:
            raise ValueError("htpasswd and token auth are exclusive")
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="regcache-registry-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.tls = tls
        self.htpasswd = htpasswd
        self.token = token
        self.s3 = s3
        self.proxy_remote = proxy_remote
        self.log_path = self.dir / "registry.log"
        self.access_log_path = self.dir / "access.log"
        self.config_path = self.dir / "config.yml"
        self._proc: ManagedProcess | None = None
        self._write_config(realm, proxy_creds)

    # -- properties ---------------------------------------------------------------------
    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def storage_dir(self) -> Path:
        return self.dir / "storage"

    # -- config -------------------------------------------------------------------------
    def _write_config(self, realm: str, proxy_creds: tuple[str, str] | None) -> None:
        storage: dict[str, object] = {"delete": {"enabled": True}}
        if self.s3:
            s3: dict[str, object] = {
                "accesskey": self.s3.access_key,
                "secretkey": self.s3.secret_key,
                "region": self.s3.region,
                "regionendpoint": self.s3.endpoint,
                "bucket": self.s3.bucket,
                "forcepathstyle": True,  # ignored by 2.8 (path style follows regionendpoint)
                "secure": False,
                "v4auth": True,
            }
            if self.s3.rootdirectory:
                s3["rootdirectory"] = self.s3.rootdirectory
            storage["s3"] = s3
            storage["redirect"] = {"disable": False}  # blob GET -> 307 to a presigned URL
        else:
            storage["filesystem"] = {"rootdirectory": str(self.storage_dir)}
        http: dict[str, object] = {"addr": self.host, "secret": secrets.token_hex(16)}
        if self.tls:
            http["tls"] = {"certificate": str(self.tls[0]), "key": str(self.tls[1])}
        config: dict[str, object] = {
            "version": "0.1",
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
            "storage": storage,
            "http": http,
        }
        if self.htpasswd:
            user, password = self.htpasswd
            htfile = self.dir / "htpasswd"
            res = subprocess.run(
                [require("htpasswd"), "-Bbn", user, password],
                capture_output=True,
                text=True,
                check=True,
                env=clean_env(),
            )
            htfile.write_text(res.stdout)
            config["auth"] = {"htpasswd": {"realm": realm, "path": str(htfile)}}
        elif self.token:
            config["auth"] = {
                "token": {
                    "realm": self.token.realm,
                    "service": self.token.service,
                    "issuer": self.token.issuer,
                    "rootcertbundle": str(self.token.rootcertbundle_path),
                }
            }
        if self.proxy_remote:
            proxy: dict[str, str] = {"remoteurl": self.proxy_remote}
            if proxy_creds:
                proxy["username"], proxy["password"] = proxy_creds
            config["proxy"] = proxy
        # JSON is YAML; no PyYAML needed and no quoting surprises ("0.1" stays a string).
        self.config_path.write_text(json.dumps(config, indent=2))

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, timeout: float = 15.0) -> Registry:
        """Start (or restart) the registry and wait until GET /v2/ answers 200 or 401."""
        if self._proc is not None and self._proc.alive():
            return self
        binary = require("docker-registry")
        # REGISTRY_* variables override the config file; a developer's must not leak in.
        env = {k: v for k, v in clean_env().items() if not k.startswith("REGISTRY_")}
        with self.log_path.open("a") as f:
            f.write(f"--- start {time.strftime('%H:%M:%S')} ---\n")
        proc = ManagedProcess(
            [binary, "serve", str(self.config_path)],
            log=self.log_path,
            stdout_log=self.access_log_path,
            env=env,
            cwd=self.dir,
        )
        proc.start()
        self._proc = proc
        on_exit(self, self.close)
        try:
            wait_for_http(f"{self.url}/v2/", timeout, (200, 401), alive=proc.alive)
        except (TimeoutError, RuntimeError) as e:
            err = proc.failure(f"docker-registry on {self.host} did not start: {e}")
            proc.kill()
            raise err from None
        return self

    def stop(self) -> None:
        """Stop the process; storage, config and port stay for a later start()."""
        if self._proc is not None:
            self._proc.stop(grace=2.0)
            self._proc = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.alive()

    # -- access log -----------------------------------------------------------------------
    def _barrier(self) -> None:
        """Make the log current before it is read.

        distribution writes an access-log line after its handler returns, which can be
        after the client already has the whole body (blobs go out by sendfile). So: send
        a marker request, wait for its line, then until the file stops growing briefly.
        """
        if not self.running:
            return
        marker = uuid.uuid4().hex
        try:
            http_status(f"{self.url}/v2/?barrier={marker}")
        except OSError:
            return
        deadline = time.monotonic() + 2.0
        seen = False
        last_size = -1
        while time.monotonic() < deadline:
            try:
                size = self.access_log_path.stat().st_size
                if not seen:
                    seen = marker in self.access_log_path.read_text(errors="replace")
                elif size == last_size:
                    return
                last_size = size
            except OSError:
                pass
            time.sleep(0.01 if seen else 0.002)

    def requests(self) -> list[AccessLogEntry]:
        """Every request the registry has logged (all runs), oldest first."""
        self._barrier()
        try:
            text = self.access_log_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        out: list[AccessLogEntry] = []
        for line in text.splitlines():
            m = _ACCESS_RE.match(line)
            if not m:
                continue
            path, _, query = m["uri"].partition("?")
            if path == "/v2/" and query.startswith("barrier="):
                continue
            size = m["size"]
            out.append(
                AccessLogEntry(
                    method=m["method"],
                    path=path,
                    query=query,
                    status=int(m["status"]),
                    size=int(size) if size.isdigit() else 0,
                    user_agent=m["ua"],
                    remote=m["remote"],
                )
            )
        return out

    def request_log(self) -> list[tuple[str, str, int]]:
        """(method, path without query, status) for every logged request, oldest first."""
        return [(e.method, e.path, e.status) for e in self.requests()]

    def blob_get_count(self, digest: str, *, successful_only: bool = True) -> int:
        """GETs of /v2/<name>/blobs/<digest>; by default only those answered 2xx or 3xx
        (served, or redirected to storage), so an auth challenge is not counted."""
        suffix = f"/blobs/{digest}"
        return sum(
            1
            for e in self.requests()
            if e.method == "GET" and e.path.endswith(suffix) and (not successful_only or 200 <= e.status < 400)
        )

    def manifest_get_count(self, reference: str, *, successful_only: bool = True) -> int:
        """GETs of /v2/<name>/manifests/<reference> (a tag or a digest)."""
        suffix = f"/manifests/{reference}"
        return sum(
            1
            for e in self.requests()
            if e.method == "GET" and e.path.endswith(suffix) and (not successful_only or 200 <= e.status < 400)
        )

    def log_tail(self, lines: int = 30) -> str:
        from tests.peers.binaries import tail

        return tail(self.log_path, lines)
