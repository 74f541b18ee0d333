"""How a URL is reached: the forward proxy for it, the CA bundle, and URLs fit for log lines."""

from __future__ import annotations

import os
import ssl
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path


def origin_of(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def redact(url: str) -> str:
    """A URL fit for a log line: presigned query strings are credentials."""
    return url.split("?", 1)[0]


def proxy_for(url: str) -> str | None:
    """The proxy for a URL from HTTPS_PROXY/HTTP_PROXY/ALL_PROXY and NO_PROXY, either case.

    Decided here rather than by curl, so that both spellings of the variables behave the same.
    """
    proxies = urllib.request.getproxies_environment()
    parts = urllib.parse.urlsplit(url)
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass_environment(parts.netloc, proxies):
        return None
    if "://" not in proxy:
        proxy = "http://" + proxy
    return proxy


def combined_ca_bundle(extra: Path) -> str:
    """The system's trusted CAs plus the operator's, in one file curl can load.

    curl takes one CA file, and naming one replaces the system bundle: the extra CA must be added
    to it, not substituted for it.
    """
    parts = []
    system = ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt"
    if os.path.exists(system):
        parts.append(Path(system).read_text())
    parts.append(extra.read_text())
    handle, path = tempfile.mkstemp(prefix="regcache-ca-", suffix=".pem")
    with os.fdopen(handle, "w") as out:
        out.write("\n".join(parts))
    return path
