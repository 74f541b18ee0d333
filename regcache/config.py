"""Settings: the validated, frozen form of everything the operator configured.

The command line (cli.py) produces raw strings; this module turns them into values and refuses
what it cannot use with a ConfigError that names the option or file entry.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import yaml

from regcache.errors import ConfigError

DOCKER_HUB = "docker.io"
BUILTIN_UPSTREAMS: Mapping[str, str] = MappingProxyType({DOCKER_HUB: "https://registry-1.docker.io"})
LOG_LEVELS = ("debug", "info", "warning", "error")
_TRUE = ("yes", "true", "1", "on")
_FALSE = ("no", "false", "0", "off")


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class CredentialStore:
    """Credentials by registry and optional repository prefix; the longest matching key wins.

    A key names the registry as containerd does (`docker.io`, the `ns` value) or as its endpoint
    host (`registry-1.docker.io`), optionally followed by a path prefix (`ghcr.io/my-org`).
    """

    entries: Mapping[str, Credentials] = field(default_factory=dict)

    def lookup(self, registry: str, endpoint_host: str, repo: str) -> Credentials | None:
        best: tuple[int, Credentials] | None = None
        for key, creds in self.entries.items():
            host, _, prefix = key.partition("/")
            if host not in (registry, endpoint_host):
                continue
            if prefix and repo != prefix and not repo.startswith(prefix + "/"):
                continue
            if best is None or len(prefix) > best[0]:
                best = (len(prefix), creds)
        return best[1] if best else None

    def __bool__(self) -> bool:
        return bool(self.entries)


@dataclass(frozen=True)
class Settings:
    host: str = "0.0.0.0"
    port: int = 3000
    cache_dir: Path = Path("/tmp/data")
    cache_manifests: bool = True
    skip_tags: re.Pattern[str] | None = re.compile("latest")
    private_registries: frozenset[str] = frozenset()
    upstreams: Mapping[str, str] = field(default_factory=lambda: BUILTIN_UPSTREAMS)
    upstream_ca: Path | None = None
    creds: CredentialStore = field(default_factory=CredentialStore)
    log_level: str = "info"
    bucket: str | None = None
    s3_prefix: str = ""
    s3_redirect: bool = False
    # Bytes the local tier may hold (LRU eviction past it); None: unbounded.
    local_cache_size: int | None = None
    upstream_idle_timeout: float = 60.0
    # --- reliability and security (issue 5) ---
    tag_ttl: float = 300.0
    allow_registries: tuple[str, ...] = ("*",)
    max_fills: int = 128
    max_fill_clients: int = 256
    client_idle_timeout: float = 60.0

    def endpoint(self, registry: str) -> str:
        """The base URL of a registry's API: configured, built in, or https://<registry>."""
        return self.upstreams.get(registry) or f"https://{registry}"


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(option: str, text: str) -> float:
    """Seconds from `300`, `30s`, `5m`, `1h` or `250ms`."""
    match = _DURATION_RE.match(str(text))
    if not match:
        raise ConfigError(f"{option} {text!r}: expected a duration such as 30s, 5m or 1h")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def parse_bool(option: str, text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{option}: expected yes/no/true/false, got {text!r}")


def parse_upstreams(items: Iterable[str]) -> Mapping[str, str]:
    """`NS=URL` pairs on top of the built-in docker.io endpoint."""
    upstreams = dict(BUILTIN_UPSTREAMS)
    for item in items:
        registry, sep, url = item.partition("=")
        registry = registry.strip().lower()
        url = url.strip().rstrip("/")
        if not sep or not registry or not url:
            raise ConfigError(f"--upstream {item!r}: expected NS=URL, e.g. registry.example.test=http://127.0.0.1:5000")
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"--upstream {item!r}: URL must be http:// or https:// with a host")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ConfigError(f"--upstream {item!r}: URL must not carry credentials, a query or a fragment")
        upstreams[registry] = url
    return MappingProxyType(upstreams)


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
DEFAULT_LOCAL_CACHE_SIZE_S3 = 10 << 30


def parse_size(option: str, text: str) -> int:
    """`10G`, `512M`, `1.5T`, `1048576`: binary units, an optional trailing `B` or `iB`."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if match is None:
        raise ConfigError(f"{option} {text!r}: expected a size such as 10G, 512M or 1048576")
    size = int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])
    if size <= 0:
        raise ConfigError(f"{option} {text!r}: must be more than 0")
    return size


def parse_skip_tags(text: str) -> re.Pattern[str] | None:
    if text == "":
        return None
    try:
        return re.compile(text)
    except re.error as exc:
        raise ConfigError(f"--skip-tags {text!r}: not a regular expression: {exc}") from None


def load_creds_file(path: Path) -> CredentialStore:
    """Parse the creds file; a ConfigError names the file and the line of what is wrong."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"--creds-file {path}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or "cannot parse"
        raise ConfigError(f"--creds-file {path}: {where}not valid YAML: {problem}") from None
    if data is None:
        return CredentialStore()
    if not isinstance(data, dict):
        raise ConfigError(f"--creds-file {path}: line 1: expected a mapping of registry: {{username, password}}")
    lines = {}
    if isinstance(root, yaml.MappingNode):
        lines = {str(k.value): k.start_mark.line + 1 for k, _v in root.value}
    entries: dict[str, Credentials] = {}
    for key, value in data.items():
        where = f"--creds-file {path}: line {lines.get(str(key), '?')}: entry {key!r}"
        name = str(key).strip().rstrip("/").lower()
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping with username and password")
        missing = [k for k in ("username", "password") if not value.get(k)]
        if missing:
            raise ConfigError(f"{where} has no {' or '.join(missing)}")
        unknown = sorted(set(value) - {"username", "password"})
        if unknown:
            raise ConfigError(f"{where} has unknown keys {unknown}")
        entries[name] = Credentials(str(value["username"]), str(value["password"]))
    return CredentialStore(MappingProxyType(entries))


def creds_file_warning(path: Path) -> str | None:
    """A warning when anyone on the host can read the passwords in the creds file."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if mode & 0o004:
        return f"--creds-file {path} is readable by every user (mode {mode & 0o777:o}); restrict it: chmod 600 {path}"
    return None
