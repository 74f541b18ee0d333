"""Loopback networking helpers shared by the peers: ports, readiness polling, clean envs."""

from __future__ import annotations

import http.client
import os
import socket
import time
import urllib.parse
from collections.abc import Callable, Iterable

PROXY_VARS = (
    "http_proxy",
    "https_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
)
# Distribution's s3 driver refuses to start with AWS_CA_BUNDLE set; no peer needs it.
_DROPPED_VARS = (*PROXY_VARS, "AWS_CA_BUNDLE")


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """os.environ without proxy variables and AWS_CA_BUNDLE, plus `extra`.

    libcurl and Go send even 127.0.0.1 traffic through a configured proxy, so no peer may
    inherit one; a caller that wants a proxy passes it explicitly in `extra`.
    """
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_VARS}
    env.update(extra)
    return env


def wait_for_port(host: str, port: int, timeout: float = 15.0) -> None:
    """Poll until a TCP connect to host:port succeeds; TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{host}:{port} not accepting connections: {e}") from e
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def http_status(url: str, *, method: str = "GET", timeout: float = 2.0) -> int:
    """One request without any proxy and without certificate checks; returns the status."""
    parts = urllib.parse.urlsplit(url)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    if parts.scheme == "https":
        import ssl

        ctx = ssl._create_unverified_context()  # noqa: S323 - loopback test peers only
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname or "127.0.0.1", parts.port, timeout=timeout, context=ctx
        )
    else:
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        conn.request(method, path, headers={"User-Agent": "regcache-test-peers"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def wait_for_http(
    url: str,
    timeout: float = 15.0,
    ok_statuses: Iterable[int] = (200,),
    *,
    alive: Callable[[], bool] | None = None,
) -> int:
    """Poll `url` until it answers with one of `ok_statuses`; return that status.

    `alive` (e.g. lambda: proc.poll() is None) lets the caller stop waiting as soon as the
    process under test has died instead of burning the whole timeout.
    """
    ok = set(ok_statuses)
    deadline = time.monotonic() + timeout
    delay = 0.005
    last: object = None
    while True:
        if alive is not None and not alive():
            raise RuntimeError(f"process died before {url} answered (last: {last})")
        try:
            status = http_status(url)
            if status in ok:
                return status
            last = f"HTTP {status}"
        except OSError as e:
            last = e
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{url} did not answer {sorted(ok)} within {timeout}s (last: {last})")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
