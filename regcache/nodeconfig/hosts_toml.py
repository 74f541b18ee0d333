"""What a hosts.toml regcache writes says: the cache first, with a short `dial_timeout`, and the
registry itself after it, so a cache that is down costs containerd one refused or timed-out
connection per pull, never the pull.

Everything here is pure: the operator's arguments are checked and turned into `HostsFile`
values before any file is touched, so a bad argument writes nothing.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from dataclasses import dataclass

from regcache.config import BUILTIN_UPSTREAMS
from regcache.errors import ConfigError

DEFAULT_HOST_DIR = "_default"  # containerd's name for "every registry without its own directory"
# The first line of every file regcache writes: how a later run or --restore knows its own files.
MARKER = "# Written by regcache node-config."
# A Go duration, as containerd parses dial_timeout: 200ms, 1s, 1m30s.
_GO_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+$")
_HOST = re.compile(
    r"^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*|\[[0-9a-f:.]+\])$"
)


@dataclass(frozen=True)
class HostsFile:
    """One hosts.toml to write: where (relative to the hosts dir) and what it says."""

    path: str  # "<registry host[:port]>/hosts.toml", or "_default/hosts.toml" for every registry
    server: str | None  # the registry's own endpoint, the fallback; None: containerd's default

    def render(self, mirror: str, dial_timeout: str) -> str:
        fallback = self.server or "each registry's own endpoint"
        lines = [
            MARKER,
            f"# containerd asks the cache at {mirror} first; when the cache fails, or does not",
            f"# answer within {dial_timeout}, it falls back to {fallback}.",
            "# Undo: python -m regcache node-config --hosts-dir <the hosts dir> --restore",
            "",
        ]
        if self.server:
            lines += [f"server = {_toml_string(self.server)}", ""]
        lines += [
            f"[host.{_toml_string(mirror)}]",
            '  capabilities = ["pull", "resolve"]',
            f"  dial_timeout = {_toml_string(dial_timeout)}",
            "",
        ]
        return "\n".join(lines)


def _toml_string(text: str) -> str:
    return json.dumps(text)  # a JSON string of printable ASCII is a TOML basic string


def parse_mirror(text: str) -> str:
    """The cache's base URL, as containerd needs it: scheme and host[:port], nothing else."""
    parts = urllib.parse.urlsplit(text.strip())
    where = f"--mirror {text!r}"
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{where}: expected http://HOST:PORT or https://HOST[:PORT]")
    if parts.username or parts.password or parts.query or parts.fragment or parts.path not in ("", "/"):
        raise ConfigError(f"{where}: only scheme, host and port (regcache serves /v2/ at its root)")
    host = (parts.hostname or "").lower()
    if parts.netloc.startswith("["):
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"{where}: the port is not a number from 1 to 65535") from None
    if not _HOST.match(host):
        raise ConfigError(f"{where}: the host is not a host name or IP address")
    return f"{parts.scheme}://{host}" + (f":{port}" if port else "")


def parse_registry(text: str) -> HostsFile:
    """A registry as a name (`docker.io`, `registry.example.com:5000`) or as its endpoint URL
    (`http://10.0.0.5:5000`): the name is the directory containerd looks up, the URL the fallback."""
    text = text.strip()
    if text == DEFAULT_HOST_DIR:
        return HostsFile(f"{DEFAULT_HOST_DIR}/hosts.toml", None)
    where = f"--registry {text!r}"
    if "://" in text:
        parts = urllib.parse.urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
            raise ConfigError(f"{where}: expected a registry name or http(s)://HOST[:PORT]")
        scheme, name = parts.scheme, parts.netloc.lower()
    else:
        scheme, name = "https", text.lower()
    server = BUILTIN_UPSTREAMS.get(name, f"{scheme}://{name}")
    host, port = _split_host_port(name)
    if not _HOST.match(host) or (port and not (port.isdigit() and 0 < int(port) < 65536)):
        raise ConfigError(f"{where}: not a registry host[:port]")
    return HostsFile(f"{name}/hosts.toml", server)


def _split_host_port(name: str) -> tuple[str, str]:
    if name.startswith("["):
        host, _, rest = name.partition("]")
        return host + "]", rest.removeprefix(":")
    host, _, port = name.partition(":")
    return host, port


def parse_dial_timeout(text: str) -> str:
    """A duration containerd accepts, and not zero (which would mean no timeout at all)."""
    if not _GO_DURATION.match(text) or not re.search(r"[1-9]", text):
        raise ConfigError(f"--dial-timeout {text!r}: expected a duration such as 200ms or 1s")
    return text
