"""Settings: the validated, frozen form of everything the operator configured.

Each option is declared once, in OPTIONS: cli.py builds the parser from it, Settings takes its
defaults from it, and Settings.from_namespace converts the parsed command line with it, so --help,
`Settings()` and a command line without the option cannot disagree. A conversion refuses what it
cannot use with a ConfigError that names the option or file entry.
"""

from __future__ import annotations

import re
import urllib.parse
from argparse import Namespace
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from regcache.credentials import CredentialStore, load_creds_file
from regcache.errors import BadRequest, ConfigError
from regcache.oci.reference import DOCKER_HUB, parse_registry

BUILTIN_UPSTREAMS: Mapping[str, str] = MappingProxyType({DOCKER_HUB: "https://registry-1.docker.io"})
LOG_LEVELS = ("debug", "info", "warning", "error")
_TRUE = ("yes", "true", "1", "on")
_FALSE = ("no", "false", "0", "off")


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


def parse_pattern(option: str, text: str) -> re.Pattern[str] | None:
    if text == "":
        return None
    try:
        return re.compile(text)
    except re.error as exc:
        raise ConfigError(f"{option} {text!r}: not a regular expression: {exc}") from None


def _as_given(option: str, value: Any) -> Any:
    return value


def _refused_unless(ok: Callable[[Any], bool], rule: str) -> Callable[[str, Any], Any]:
    def check(option: str, value: Any) -> Any:
        if not ok(value):
            raise ConfigError(f"{option} {value}: {rule}")
        return value

    return check


_POSITIVE = _refused_unless(lambda seconds: seconds > 0, "must be positive")
_AT_LEAST_ONE = _refused_unless(lambda count: count >= 1, "must be at least 1")


def _bucket(option: str, text: str | None) -> str | None:
    bucket = (text or "").strip() or None
    if bucket is not None and not re.fullmatch(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]", bucket):
        raise ConfigError(f"{option} {bucket!r}: not an S3 bucket name (3-63 lower-case letters, digits, '.', '-')")
    return bucket


def _private_registries(option: str, names: list[str]) -> frozenset[str]:
    private = set()
    for name in names:
        try:
            private.add(parse_registry(name.strip()))
        except BadRequest:
            raise ConfigError(f"{option} {name!r}: not a registry host[:port]") from None
    return frozenset(private)


def _ca_bundle(option: str, text: str | None) -> Path | None:
    """Read at start-up: a wrong path would otherwise surface as every TLS fetch failing."""
    if not text:
        return None
    path = Path(text)
    try:
        pem = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{option} {path}: cannot read: {exc.strerror}") from None
    if "BEGIN CERTIFICATE" not in pem:
        raise ConfigError(f"{option} {path}: no PEM certificate in it")
    return path


def _registry_globs(option: str, patterns: list[str]) -> tuple[str, ...]:
    """No pattern means every registry, so an operator who sets none is not locked out."""
    globs = []
    for pattern in patterns or ["*"]:
        pattern = pattern.strip().lower()
        if not pattern or any(c.isspace() or c in "/#@" for c in pattern):
            raise ConfigError(f"{option} {pattern!r}: expected a glob of host[:port], e.g. *.example.com")
        globs.append(pattern)
    return tuple(globs)


@dataclass(frozen=True)
class Option:
    """One option as the operator writes it, and how it becomes its Settings field."""

    flags: str  # as argparse names it in its errors: "-p/--port"
    default: object  # as an operator would write it: --help shows it, Settings() converts it
    parse: Callable[[str, Any], object]  # (long flag, what argparse gives) → the Settings value
    help: str
    into: str = ""  # the Settings field, when it is not named like the option
    type: Callable[[str], object] | None = None  # argparse's, for its "invalid int value" message
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    action: str = "store"  # "append": repeatable; "store_true": a switch

    @property
    def long(self) -> str:
        return self.flags.split("/")[-1]

    @property
    def dest(self) -> str:
        """The argparse attribute; configargparse names the env var and YAML key after it too."""
        return self.long[2:].replace("-", "_")

    @property
    def field(self) -> str:
        return self.into or self.dest


# In --help order. Environment variable REGCACHE_<LONG_NAME>, config-file key <long-name>.
# Laid out by hand, one option to a row or two, so it reads as the table it is.
# fmt: off
OPTIONS: tuple[Option, ...] = (
    Option("-b/--bucket", None, _bucket,
           help="S3 bucket shared by replicas, behind the local disk; credentials, region and endpoint "
           "come from the standard AWS variables (AWS_ENDPOINT_URL_S3 for S3-compatible stores)"),
    Option("--s3-prefix", "", lambda _, prefix: prefix.strip("/"),
           help="key prefix for everything regcache stores in the bucket"),
    Option("--s3-redirect", False, _as_given, action="store_true",
           help="answer a blob that is only in S3 with a 307 to a presigned URL (not for private registries)"),
    # Unset is None here; Settings.from_namespace then bounds S3 mode.
    Option("--local-cache-size", None, lambda option, size: parse_size(option, size) if size else None, metavar="SIZE",
           help="bound the local tier (K/M/G/T suffix), evicting least recently used objects; "
           "default 10G with --bucket, unbounded without"),
    Option("-d/--cache-dir", "/tmp/data", lambda _, path: Path(path), help="local cache directory"),
    Option("-m/--cache-manifests", "true", parse_bool, help="cache manifests: yes/no/true/false"),
    Option("-f/--creds-file", None, lambda _, path: load_creds_file(Path(path)) if path else CredentialStore(),
           into="creds", help="YAML file of upstream credentials: <registry>[/<prefix>]: {username, password}, "
           "or {ecr: ...} for Amazon ECR"),
    Option("-l/--log-level", "info", _as_given, choices=LOG_LEVELS, help="log level"),
    Option("-p/--port", 3000, _refused_unless(lambda port: 0 < port < 65536, "must be 1-65535"), type=int,
           help="port to listen on"),
    Option("--host", "0.0.0.0", _as_given, help="address to listen on"),
    Option("--private-registry", [], _private_registries, into="private_registries", metavar="REGISTRY",
           action="append", help="registry whose manifests are never cached (repeatable; blobs still are)"),
    Option("-t/--skip-tags", "latest", parse_pattern,
           help="regex searched in the tag: matching tags are always fetched and never stored ('' for none)"),
    Option("--skip-repos", "", parse_pattern, metavar="REGEX",
           help="regex searched in <registry>/<repository>: manifests and blobs of matching repositories are "
           "always fetched and never stored ('' for none)"),
    Option("--upstream", [], lambda _, items: parse_upstreams(items), into="upstreams", metavar="NS=URL",
           action="append", help="endpoint for a registry name (repeatable); built in: "
           "docker.io=https://registry-1.docker.io; any other X means https://X"),
    Option("--upstream-ca", None, _ca_bundle, metavar="FILE",
           help="extra PEM CA bundle trusted for upstream TLS, besides the system's"),
    Option("--upstream-idle-timeout", 60.0, _POSITIVE, type=float, metavar="SECONDS",
           help="abort an upstream download that sends no byte for this long"),
    Option("--tag-ttl", "5m", parse_duration, metavar="DURATION",
           help="serve a cached tag this long (30s, 5m, 1h), then revalidate it with a HEAD upstream"),
    Option("--allow-registry", [], _registry_globs, into="allow_registries", metavar="PATTERN", action="append",
           help="glob of registries served, named by ns or first in the path (repeatable; default '*': every registry)"),
    Option("--max-fills", 128, _AT_LEAST_ONE, type=int, metavar="N",
           help="upstream downloads into the cache at once; more cold blobs get 503 (the registry serves them)"),
    Option("--max-fill-clients", 256, _AT_LEAST_ONE, type=int, metavar="N",
           help="clients reading one download at once; more get 503"),
    Option("--client-idle-timeout", 60.0, _POSITIVE, type=float, metavar="SECONDS",
           help="close a client connection that sends no request, or takes no byte, for this long"),
    Option("--offline", False, _as_given, action="store_true",
           help="never contact a registry: serve what is cached (tags whatever their age), answer "
           "everything else 404 so clients go to the registry themselves"),
)
# fmt: on
_OPTION_OF_FIELD = {option.field: option for option in OPTIONS}


def _default(name: str) -> Any:
    """A Settings field defaulting to what a command line without its option gives."""
    option = _OPTION_OF_FIELD[name]
    return field(default_factory=lambda: option.parse(option.long, option.default))


@dataclass(frozen=True)
class Settings:
    host: str = _default("host")
    port: int = _default("port")
    cache_dir: Path = _default("cache_dir")
    cache_manifests: bool = _default("cache_manifests")
    skip_tags: re.Pattern[str] | None = _default("skip_tags")
    skip_repos: re.Pattern[str] | None = _default("skip_repos")
    private_registries: frozenset[str] = _default("private_registries")
    upstreams: Mapping[str, str] = _default("upstreams")
    upstream_ca: Path | None = _default("upstream_ca")
    creds: CredentialStore = _default("creds")
    log_level: str = _default("log_level")
    bucket: str | None = _default("bucket")
    s3_prefix: str = _default("s3_prefix")
    s3_redirect: bool = _default("s3_redirect")
    # Bytes the local tier may hold (LRU eviction past it); None: unbounded.
    local_cache_size: int | None = _default("local_cache_size")
    upstream_idle_timeout: float = _default("upstream_idle_timeout")
    tag_ttl: float = _default("tag_ttl")
    allow_registries: tuple[str, ...] = _default("allow_registries")
    max_fills: int = _default("max_fills")
    max_fill_clients: int = _default("max_fill_clients")
    client_idle_timeout: float = _default("client_idle_timeout")
    offline: bool = _default("offline")

    @classmethod
    def from_namespace(cls, args: Namespace) -> Settings:
        """Convert and check every option before anything starts; a ConfigError names the culprit.

        Then the rules that involve several options; S3 mode bounds the local tier unless told how.
        """
        settings = cls(**{option.field: option.parse(option.long, getattr(args, option.dest)) for option in OPTIONS})
        if settings.bucket is None:
            if settings.s3_redirect:
                raise ConfigError("--s3-redirect: needs --bucket (it redirects to objects in the bucket)")
            if settings.s3_prefix:
                raise ConfigError("--s3-prefix: needs --bucket")
        elif settings.local_cache_size is None:
            return replace(settings, local_cache_size=DEFAULT_LOCAL_CACHE_SIZE_S3)
        return settings

    def endpoint(self, registry: str) -> str:
        """The base URL of a registry's API: configured, built in, or https://<registry>."""
        return self.upstreams.get(registry) or f"https://{registry}"
