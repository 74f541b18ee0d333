"""containerd's hosts dir, and regcache's record of what it changed there.

Undoing must be exact, because the files regcache replaces are the operator's: before replacing
one it keeps a byte-identical copy, and it records every file it wrote in
`<hosts-dir>/.regcache-node-config/state.json`, so a restore puts back the copies and removes only
what it added. The state, not the file contents, says what is ours: a second run rewrites its own
files without backing them up again.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from regcache.errors import ConfigError
from regcache.nodeconfig.hosts_toml import DEFAULT_HOST_DIR, MARKER, HostsFile

STATE_DIR = ".regcache-node-config"


@dataclass(frozen=True)
class Change:
    """What regcache did to one hosts.toml, as state.json records it."""

    backup: str | None  # the copy of the file it replaced, relative to the state dir; None: it added one
    made_dir: bool  # whether it created the registry's directory too


class HostsDir:
    """The containerd hosts dir and regcache's record of what it changed there."""

    def __init__(self, root: Path) -> None:
        if not root.exists():
            raise ConfigError(
                f"--hosts-dir {root}: does not exist (containerd's hosts dir, e.g. /etc/containerd/certs.d)"
            )
        if not root.is_dir():
            raise ConfigError(f"--hosts-dir {root}: not a directory")
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
            raise ConfigError(f"--hosts-dir {self.root}: not writable ({exc.strerror})") from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.state_file.exists():
                self.files = self._recorded()
            yield
            if not self.files:  # nothing of regcache's is left here: leave no trace either
                shutil.rmtree(self.state_dir)

    def _recorded(self) -> dict[str, Change]:
        try:
            recorded = json.loads(self.state_file.read_text())["files"]
            return {path: Change(**change) for path, change in recorded.items()}
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ConfigError(
                f"{self.state_file}: not a record regcache can read; its backups are in {self.state_dir}/backup"
            ) from None

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
