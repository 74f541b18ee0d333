"""The creds file: what regcache authenticates with at each upstream, by registry and prefix.

An entry holds either a username and password, or `ecr:` for Amazon ECR, whose password is a
token that expires after 12 hours and so cannot be written down: upstream/ecr.py gets it from
ECR's API when a registry needs it. Parsed once at start-up; a ConfigError names the file, the
line and the entry of what is wrong.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import yaml

from regcache.errors import ConfigError

ECR_KEYS = ("region", "registry_id", "endpoint")
_REGION_RE = re.compile(r"[a-z]{2}(-[a-z0-9]+)+")
_ACCOUNT_RE = re.compile(r"\d{12}")


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class EcrAuth:
    """Where to ask for an ECR registry's token; None means "from the host name, else the AWS
    chain" (region: AWS_REGION or the profile; endpoint: AWS_ENDPOINT_URL_ECR or AWS's own)."""

    region: str | None = None
    registry_id: str | None = None  # the AWS account that owns the registry
    endpoint: str | None = None  # the ECR API (a VPC endpoint, or a stand-in in tests)


@dataclass(frozen=True)
class NoCredentials:
    """An entry `ecr: false`: regcache authenticates with nothing of its own at this registry,
    not even an ECR token its AWS identity could get; clients authenticate themselves."""


CredentialEntry = Credentials | EcrAuth | NoCredentials


@dataclass(frozen=True)
class CredentialStore:
    """Entries by registry and optional repository prefix; the longest matching key wins.

    A key names the registry as containerd does (`docker.io`, the `ns` value) or as its endpoint
    host (`registry-1.docker.io`), optionally followed by a path prefix (`ghcr.io/my-org`).
    """

    entries: Mapping[str, CredentialEntry] = field(default_factory=dict)

    def lookup(self, registry: str, endpoint_host: str, repo: str) -> CredentialEntry | None:
        best: tuple[int, CredentialEntry] | None = None
        for key, entry in self.entries.items():
            host, _, prefix = key.partition("/")
            if host not in (registry, endpoint_host):
                continue
            if prefix and repo != prefix and not repo.startswith(prefix + "/"):
                continue
            if best is None or len(prefix) > best[0]:
                best = (len(prefix), entry)
        return best[1] if best else None

    def __bool__(self) -> bool:
        return bool(self.entries)


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
    lines = {str(k.value): k.start_mark.line + 1 for k, _v in root.value}  # data is a dict: root is its MappingNode
    entries: dict[str, CredentialEntry] = {}
    for key, value in data.items():
        where = f"--creds-file {path}: line {lines.get(str(key), '?')}: entry {key!r}"
        name = str(key).strip().rstrip("/").lower()
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping with username and password, or ecr")
        entries[name] = _ecr_entry(where, value) if "ecr" in value else _password_entry(where, value)
    return CredentialStore(MappingProxyType(entries))


def _password_entry(where: str, value: dict[object, object]) -> Credentials:
    missing = [k for k in ("username", "password") if not value.get(k)]
    if missing:
        raise ConfigError(f"{where} has no {' or '.join(missing)}")
    unknown = sorted(str(k) for k in set(value) - {"username", "password"})
    if unknown:
        raise ConfigError(f"{where} has unknown keys {unknown}")
    return Credentials(str(value["username"]), str(value["password"]))


def _ecr_entry(where: str, value: dict[object, object]) -> EcrAuth | NoCredentials:
    """`ecr: true`, `ecr: {}`, `ecr: {region, registry_id, endpoint}` or `ecr: false`, alone."""
    others = sorted(str(k) for k in set(value) - {"ecr"})
    if others:
        raise ConfigError(f"{where} has ecr and {others}: ECR entries get their password from ECR, give none")
    ecr = value["ecr"]
    if ecr is None or ecr is True:
        return EcrAuth()
    if ecr is False:
        return NoCredentials()
    if not isinstance(ecr, dict):
        raise ConfigError(f"{where}: ecr must be true, false or a mapping of {', '.join(ECR_KEYS)}")
    unknown = sorted(str(k) for k in set(ecr) - set(ECR_KEYS))
    if unknown:
        raise ConfigError(f"{where}: ecr has unknown keys {unknown} (known: {', '.join(ECR_KEYS)})")
    region = str(ecr["region"]).strip() if ecr.get("region") else None
    if region is not None and not _REGION_RE.fullmatch(region):
        raise ConfigError(f"{where}: ecr region {region!r} is not an AWS region such as eu-west-1")
    account = ecr.get("registry_id")
    registry_id = str(account).strip() if account else None
    if registry_id is not None and not _ACCOUNT_RE.fullmatch(registry_id):
        # YAML reads unquoted digits as a number: an account with a leading 0 loses it (or is octal).
        hint = " (quote it: YAML reads digits with a leading 0 as a number)" if isinstance(account, int) else ""
        raise ConfigError(f"{where}: ecr registry_id {account!r} is not a 12-digit AWS account id{hint}")
    endpoint = str(ecr["endpoint"]).strip().rstrip("/") if ecr.get("endpoint") else None
    if endpoint is not None:
        parts = urllib.parse.urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"{where}: ecr endpoint {endpoint!r} must be an http:// or https:// URL")
    return EcrAuth(region, registry_id, endpoint)


def creds_file_warning(path: Path) -> str | None:
    """A warning when anyone on the host can read the passwords in the creds file."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if mode & 0o004:
        return f"--creds-file {path} is readable by every user (mode {mode & 0o777:o}); restrict it: chmod 600 {path}"
    return None
