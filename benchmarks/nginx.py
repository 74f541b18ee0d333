"""nginx as the caching reverse proxy users would deploy instead of regcache.

`proxy_cache` with `proxy_cache_lock on` (one upstream fetch per key; the other clients wait for
the whole response to be cached), plus a static location serving the upstream registry's blob
files with sendfile, the warm-path reference. Against an HTTPS upstream it verifies the
certificate against the run's CA, checking the name `localhost`: nginx matches the name with
X509_check_host, which never looks at IP-address entries, so 127.0.0.1 would not verify.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from tests.peers.binaries import ManagedProcess
from tests.peers.net import free_port, wait_for_http

_CONFIG = """\
{user}daemon off;
master_process on;
worker_processes 2;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    proxy_cache_path {dir}/cache levels=1:2 keys_zone=bench:16m max_size=64g inactive=1d use_temp_path=off;
    server {{
        listen 127.0.0.1:{port};
        location = /nginx-health {{ return 200 "ok"; }}
{static}
        location /v2/ {{
            proxy_pass {upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache bench;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 600s;
            proxy_cache_lock_age 600s;
            proxy_cache_valid 200 1d;
            proxy_read_timeout 600s;
            proxy_buffer_size 64k;
            proxy_buffers 16 1m;
            proxy_busy_buffers_size 2m;
{tls}        }}
    }}
}}
"""
_TLS = """\
            proxy_ssl_trusted_certificate {ca};
            proxy_ssl_verify on;
            proxy_ssl_verify_depth 2;
            proxy_ssl_name localhost;
            proxy_ssl_server_name on;
            proxy_ssl_session_reuse on;
"""


class Nginx:
    """One nginx master (with its workers) on a free port and its own cache dir."""

    def __init__(self, binary: str, upstream_url: str, static_root: Path | None = None, ca: Path | None = None) -> None:
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix="regcache-bench-nginx-"))
        self.port = free_port()
        (self.dir / "tmp").mkdir()
        static = ""
        if static_root is not None:
            static = f"        location /static/ {{ alias {static_root}/; }}"
        tls = "" if ca is None else _TLS.format(ca=ca)
        user = "user root;\n" if os.geteuid() == 0 else ""  # workers must reach our 0700 temp dirs
        self.config = self.dir / "nginx.conf"
        self.config.write_text(
            _CONFIG.format(user=user, dir=self.dir, port=self.port, upstream=upstream_url, static=static, tls=tls)
        )
        self.proc: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Nginx:
        argv = [self.binary, "-p", str(self.dir), "-e", str(self.dir / "error.log"), "-c", str(self.config)]
        self.proc = ManagedProcess(argv, log=self.dir / "stderr.log")
        self.proc.start()
        try:
            wait_for_http(f"{self.url}/nginx-health", timeout=15, alive=self.proc.alive)
        except (TimeoutError, RuntimeError) as exc:
            err = self.proc.failure(f"nginx did not start: {exc}", self.dir / "error.log")
            self.close()
            raise err from None
        return self

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stop(grace=2.0)
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)
