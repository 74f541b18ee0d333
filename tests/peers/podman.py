"""A real podman (rootful, its own storage under a temp dir) pulling through registries.conf.

podman, CRI-O, skopeo and buildah share containers/image: a `[[registry.mirror]]` entry of
registries.conf is how each of them is pointed at a mirror, so this peer stands for all of them.
Everything podman keeps (images, its database, locks) lives under the work dir; the host's
registries.conf, storage.conf and policy.json are not read, nor are proxy variables inherited.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.peers.binaries import require
from tests.peers.net import clean_env


@dataclass(frozen=True)
class Mirror:
    """One `[[registry]]` entry: images named `prefix/...` are pulled from `location` first."""

    prefix: str
    location: str
    insecure: bool = True


@dataclass(frozen=True)
class Result:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    def shown(self) -> str:
        """The command and what it printed, as a user would see it in a terminal."""
        return f"$ {' '.join(self.argv)}\n{self.stdout}{self.stderr}"


class Podman:
    def __init__(self, workdir: Path | str | None = None) -> None:
        self.binary = require("podman")
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="regcache-podman-"))
        for sub in ("root", "runroot", "tmp", "home"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        self.registries_conf = self.workdir / "registries.conf"
        self.policy = self.workdir / "policy.json"
        self.policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        self.storage_conf = self.workdir / "storage.conf"
        self.storage_conf.write_text(
            f'[storage]\ndriver = "vfs"\nrunroot = "{self.workdir / "runroot"}"\ngraphroot = "{self.workdir / "root"}"\n'
        )
        self.configure([])

    def configure(self, mirrors: list[Mirror]) -> str:
        """Write registries.conf (no search registries: only fully qualified names) and return it."""
        lines = ["unqualified-search-registries = []", ""]
        for mirror in mirrors:
            lines += [
                "[[registry]]",
                f'prefix = "{mirror.prefix}"',
                f'location = "{mirror.prefix}"',
                "",
                "[[registry.mirror]]",
                f'location = "{mirror.location}"',
                f"insecure = {'true' if mirror.insecure else 'false'}",
                "",
            ]
        text = "\n".join(lines)
        self.registries_conf.write_text(text)
        return text

    def global_args(self) -> list[str]:
        root = self.workdir
        return [
            "--root",
            str(root / "root"),
            "--runroot",
            str(root / "runroot"),
            "--tmpdir",
            str(root / "tmp"),
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "none",
        ]

    def run(self, *args: str, timeout: float = 120) -> Result:
        argv = [self.binary, *self.global_args(), *args]
        env = clean_env(
            CONTAINERS_REGISTRIES_CONF=str(self.registries_conf),
            CONTAINERS_STORAGE_CONF=str(self.storage_conf),
            HOME=str(self.workdir / "home"),
        )
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
        return Result(["podman", *self.global_args(), *args], done.returncode, done.stdout, done.stderr)

    def pull(self, ref: str) -> Result:
        result = self.run("pull", f"--signature-policy={self.policy}", ref)
        if result.returncode != 0:
            raise RuntimeError(f"podman pull {ref} failed ({result.returncode}):\n{result.shown()}")
        return result

    def image_ids(self) -> dict[str, str]:
        """Image name:tag -> full image ID (the config digest's hex)."""
        result = self.run("images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}", "--no-trunc")
        pairs = (line.split() for line in result.stdout.splitlines() if line.strip())
        return {name: image_id.removeprefix("sha256:") for name, image_id in pairs}

    def remove_image(self, ref: str) -> None:
        self.run("rmi", "--force", ref)

    def close(self) -> None:
        self.run("rmi", "--all", "--force")
        shutil.rmtree(self.workdir, ignore_errors=True)
