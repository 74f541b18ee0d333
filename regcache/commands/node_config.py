"""`python -m regcache node-config`: point a node's containerd at the cache, and undo it.

It writes `<hosts-dir>/_default/hosts.toml` (or one `<registry>/hosts.toml` per --registry) that
lists the cache first, with a short `dial_timeout`, and the registry itself after it, so a cache
that is down costs containerd one refused or timed-out connection per pull, never the pull.

Undoing must be exact, because the files it replaces are the operator's: before replacing one it
keeps a byte-identical copy, and it records every file it wrote in `<hosts-dir>/.regcache-node-
config/state.json`, so `--restore` puts back the copies and removes only what it added. The state,
not the file contents, says what is ours: a second run rewrites its own files without backing
them up again, and a run with other registries first restores the files the new list drops.

containerd reads hosts.toml files only when its CRI config names the directory (`config_path`):
this command reads containerd's config to say whether it does, and never edits it.
"""

from __future__ import annotations

import argparse
import fcntl
import glob
import json
import os
import re
import shutil
import sys
import tempfile
import tomllib
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from regcache.config import BUILTIN_UPSTREAMS

PROG = "regcache node-config"
STATE_DIR = ".regcache-node-config"
DEFAULT_HOST_DIR = "_default"  # containerd's name for "every registry without its own directory"
MARKER = "# Written by regcache node-config."
# A Go duration, as containerd parses dial_timeout: 200ms, 1s, 1m30s.
_GO_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+$")
_HOST = re.compile(
    r"^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*|\[[0-9a-f:.]+\])$"
)
# The CRI tables that hold `config_path`, by containerd config version (3: containerd 2.x).
_REGISTRY_TABLES = (
    ("io.containerd.cri.v1.images", "registry"),
    ("io.containerd.grpc.v1.cri", "registry"),
    ("cri", "registry"),
)
# containerd 2.x reads these when a version 3 config sets no config_path.
_V3_DEFAULT_CONFIG_PATH = "/etc/containerd/certs.d:/etc/docker/certs.d"


class NodeConfigError(Exception):
    """A problem the operator must fix before anything is written: one line, exit status 2."""


@dataclass(frozen=True)
class HostsFile:
    """One hosts.toml to write: where (relative to the hosts dir) and what it says."""

    path: str  # "_default/hosts.toml", "docker.io/hosts.toml"
    registry: str  # "_default" or the registry's host[:port]
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
        raise NodeConfigError(f"{where}: expected http://HOST:PORT or https://HOST[:PORT]")
    if parts.username or parts.password or parts.query or parts.fragment or parts.path not in ("", "/"):
        raise NodeConfigError(f"{where}: only scheme, host and port (regcache serves /v2/ at its root)")
    host = (parts.hostname or "").lower()
    if parts.netloc.startswith("["):
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        raise NodeConfigError(f"{where}: the port is not a number from 1 to 65535") from None
    if not _HOST.match(host):
        raise NodeConfigError(f"{where}: the host is not a host name or IP address")
    return f"{parts.scheme}://{host}" + (f":{port}" if port else "")


def parse_registry(text: str) -> HostsFile:
    """A registry as a name (`docker.io`, `registry.example.com:5000`) or as its endpoint URL
    (`http://10.0.0.5:5000`): the name is the directory containerd looks up, the URL the fallback."""
    text = text.strip()
    if text == DEFAULT_HOST_DIR:
        return HostsFile(f"{DEFAULT_HOST_DIR}/hosts.toml", DEFAULT_HOST_DIR, None)
    where = f"--registry {text!r}"
    if "://" in text:
        parts = urllib.parse.urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
            raise NodeConfigError(f"{where}: expected a registry name or http(s)://HOST[:PORT]")
        name = parts.netloc.lower()
        server = f"{parts.scheme}://{name}"
        if name == "docker.io":
            server = BUILTIN_UPSTREAMS[name]
    else:
        name = text.lower()
        server = BUILTIN_UPSTREAMS.get(name, f"https://{name}")
    host, port = _split_host_port(name)
    if not _HOST.match(host) or (port and not (port.isdigit() and 0 < int(port) < 65536)):
        raise NodeConfigError(f"{where}: not a registry host[:port]")
    return HostsFile(f"{name}/hosts.toml", name, server)


def _split_host_port(name: str) -> tuple[str, str]:
    if name.startswith("["):
        host, _, rest = name.partition("]")
        return host + "]", rest.removeprefix(":")
    host, _, port = name.partition(":")
    return host, port


def parse_dial_timeout(text: str) -> str:
    if not _GO_DURATION.match(text) or not re.search(r"[1-9]", text):
        raise NodeConfigError(f"--dial-timeout {text!r}: expected a duration such as 200ms or 1s")
    return text


# --- the hosts dir and its state --------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """What regcache did to one hosts.toml, as state.json records it."""

    backup: str | None  # the copy of the file it replaced, relative to the state dir; None: it added one
    made_dir: bool  # whether it created the registry's directory too


class HostsDir:
    """The containerd hosts dir and regcache's record of what it changed there."""

    def __init__(self, root: Path) -> None:
        if not root.exists():
            raise NodeConfigError(
                f"--hosts-dir {root}: does not exist (containerd's hosts dir, e.g. /etc/containerd/certs.d)"
            )
        if not root.is_dir():
            raise NodeConfigError(f"--hosts-dir {root}: not a directory")
        self.root = root
        self.state_dir = root / STATE_DIR
        self.state_file = self.state_dir / "state.json"
        self.files: dict[str, Change] = {}  # by path relative to root

    @contextmanager
    def locked(self, create: bool) -> Iterator[None]:
        """One run at a time per node: a restore hook may start while a configuring pod exits."""
        if not create and not self.state_dir.is_dir():
            yield
            return
        try:
            self.state_dir.mkdir(exist_ok=True)
            lock = open(self.state_dir / "lock", "a")  # noqa: SIM115 - held for the block
        except OSError as exc:
            raise NodeConfigError(f"--hosts-dir {self.root}: not writable ({exc.strerror})") from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.state_file.exists():
                recorded = json.loads(self.state_file.read_text())["files"]
                self.files = {path: Change(**change) for path, change in recorded.items()}
            yield
            if not self.files:  # nothing of regcache's is left here: leave no trace either
                shutil.rmtree(self.state_dir)

    def save(self) -> None:
        _write_atomically(
            self.state_file,
            json.dumps({"version": 1, "files": {p: asdict(c) for p, c in self.files.items()}}, indent=2) + "\n",
        )

    def install(self, wanted: HostsFile, content: str) -> str:
        """Write one hosts.toml, keeping a copy of the file it replaces the first time only."""
        target = self.root / wanted.path
        if wanted.path in self.files:
            if target.exists() and target.read_text(errors="replace") == content:
                return f"unchanged {target}"
            _write_atomically(target, content)
            return f"updated {target}"
        said = f"wrote {target}"
        backup = None
        if target.exists() and target.read_text(errors="replace").startswith(MARKER):
            said = f"rewrote {target} (regcache's own file: no copy kept)"
        elif target.exists():
            backup = f"backup/{wanted.path}"
            copy = self.state_dir / backup
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(target, copy)
            said += f" (the file it replaced is kept in {copy}{_lost_settings(target)})"
        # Recorded before the write: an interrupted run still knows what to restore.
        self.files[wanted.path] = Change(backup, made_dir=not target.parent.exists())
        self.save()
        target.parent.mkdir(exist_ok=True)
        _write_atomically(target, content)
        return said

    def restore(self, path: str) -> str:
        """Put back the copy of `path`, or remove it if there was none, unless someone changed it."""
        change = self.files.pop(path)
        backup = change.backup
        target = self.root / path
        ours = target.exists() and target.read_text(errors="replace").startswith(MARKER)
        if target.exists() and not ours:
            said = f"left {target}: it was changed after regcache wrote it"
            if backup is not None:
                kept = target.with_name(target.name + ".before-regcache")
                os.replace(self.state_dir / backup, kept)
                said += f"; the file regcache replaced is in {kept}"
        elif backup is not None:
            target.parent.mkdir(exist_ok=True)
            os.replace(self.state_dir / backup, target)
            said = f"restored {target}"
        else:
            target.unlink(missing_ok=True)
            said = f"removed {target}"
            if change.made_dir:
                try:
                    target.parent.rmdir()
                except OSError:  # someone put files of their own there since
                    pass
        self.save()
        return said

    def own_dirs_of_other_registries(self) -> list[str]:
        """Registries with their own hosts.toml, which `_default` therefore does not cover."""
        names = []
        for entry in sorted(self.root.iterdir()):
            if entry.name in (STATE_DIR, DEFAULT_HOST_DIR) or f"{entry.name}/hosts.toml" in self.files:
                continue
            if (entry / "hosts.toml").is_file():
                names.append(entry.name)
        return names


def _write_atomically(path: Path, text: str) -> None:
    """containerd reads hosts.toml at every pull: it must never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _lost_settings(path: Path) -> str:
    """What the replaced file configured that stops applying while regcache's file is there."""
    try:
        hosts = list(tomllib.loads(path.read_text()).get("host", {}))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return ""
    return f"; its hosts {', '.join(hosts)} do not apply until --restore" if hosts else ""


# --- containerd's config.toml ------------------------------------------------------------------


def containerd_reads(config: Path, hosts_dir: Path) -> tuple[bool, str]:
    """Whether containerd's CRI plugin reads `hosts_dir`, and a line that says why (or why not)."""
    if not config.is_file():
        return False, (
            f"no containerd config at {config}: containerd 1.x then reads no hosts dir (2.x reads "
            f"/etc/containerd/certs.d); pass --containerd-config if it is elsewhere"
        )
    try:
        data = tomllib.loads(config.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return False, f"cannot read containerd config {config}: {exc}"
    found = _config_path(data)
    for pattern in data.get("imports", []):  # drop-in files override the main one
        for name in sorted(glob.glob(str(config.parent / pattern))):
            try:
                found = _config_path(tomllib.loads(Path(name).read_text())) or found
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
                continue
    table = '[plugins."io.containerd.grpc.v1.cri".registry]'
    if data.get("version") == 3:
        table = '[plugins."io.containerd.cri.v1.images".registry]'
    if found is None and data.get("version") == 3:
        found = _V3_DEFAULT_CONFIG_PATH
    if found is None:
        return False, (
            f"{config} sets no config_path, so containerd does not read {hosts_dir}: add "
            f'`config_path = "{hosts_dir}"` under {table} and restart containerd (this command never edits it)'
        )
    dirs = [Path(d) for d in found.split(":") if d]
    if hosts_dir.resolve() not in [d.resolve() for d in dirs]:
        return False, f"{config} sets config_path = {found!r}, not {hosts_dir}: containerd does not read these files"
    return True, f"containerd reads {hosts_dir} (config_path = {found!r} in {config})"


def _config_path(data: dict[str, object]) -> str | None:
    plugins = data.get("plugins")
    if not isinstance(plugins, dict):
        return None
    for plugin, table in _REGISTRY_TABLES:
        section = plugins.get(plugin, {})
        registry = section.get(table, {}) if isinstance(section, dict) else {}
        if isinstance(registry, dict) and isinstance(registry.get("config_path"), str):
            return registry["config_path"]
    return None


# --- the command -------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{PROG}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Write containerd hosts.toml files that send pulls to regcache first, with the registry "
        "itself as fallback; --restore puts back what was there before.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--hosts-dir", required=True, help="containerd's hosts dir, as its config_path names it")
    parser.add_argument("--mirror", metavar="URL", help="the cache as this node reaches it, e.g. http://10.0.0.7:30000")
    parser.add_argument(
        "--registry",
        action="append",
        default=[],
        metavar="NAME|URL",
        help="write <NAME>/hosts.toml for this registry only (repeatable); a URL names its endpoint. "
        "Default: _default/hosts.toml, for every registry without a directory of its own",
    )
    parser.add_argument("--dial-timeout", default="200ms", help="how long containerd waits to connect to the cache")
    parser.add_argument(
        "--containerd-config",
        default="/etc/containerd/config.toml",
        type=Path,
        help="checked for config_path, never changed",
    )
    parser.add_argument("--restore", action="store_true", help="undo what earlier runs wrote")
    return parser


def configure(hosts: HostsDir, args: argparse.Namespace) -> list[str]:
    mirror = parse_mirror(args.mirror)
    dial_timeout = parse_dial_timeout(args.dial_timeout)
    wanted = {f.path: f for f in map(parse_registry, args.registry or [DEFAULT_HOST_DIR])}
    said = []
    with hosts.locked(create=True):
        for path in [p for p in hosts.files if p not in wanted]:
            said.append(hosts.restore(path))
        for hosts_file in wanted.values():
            said.append(hosts.install(hosts_file, hosts_file.render(mirror, dial_timeout)))
        if DEFAULT_HOST_DIR in {f.registry for f in wanted.values()}:
            for name in hosts.own_dirs_of_other_registries():
                said.append(
                    f"note: {name} has its own hosts.toml, so pulls from {name} do not use the cache "
                    f"(add --registry {name} to cover it)"
                )
    reads, why = containerd_reads(args.containerd_config, Path(args.hosts_dir))
    said.append(why if reads else f"WARNING: {why}")
    return said


def restore(hosts: HostsDir) -> list[str]:
    with hosts.locked(create=False):
        if not hosts.files:
            return [f"nothing to restore in {hosts.root}: regcache has not configured it"]
        return [hosts.restore(path) for path in list(hosts.files)]


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not args.restore and not args.mirror:
            raise NodeConfigError("--mirror URL is required (or --restore)")
        hosts = HostsDir(Path(args.hosts_dir))
        said = restore(hosts) if args.restore else configure(hosts, args)
    except NodeConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{PROG}: error: {exc.filename or args.hosts_dir}: {exc.strerror}", file=sys.stderr)
        return 1
    for line in said:
        print(f"node-config: {line}", flush=True)
    return 0
