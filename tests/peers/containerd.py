"""A private containerd (1.6) and `ctr` as the real client of regcache.

Note: with `ctr image pull` the registry traffic comes from the *ctr* process (the
resolver and fetcher run client-side; the daemon only stores content and unpacks), so
proxy variables and --hosts-dir apply to ctr, not to the daemon.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tests.peers.binaries import ManagedProcess, Peer, on_exit, require
from tests.peers.net import clean_env


def _toml_str(s: str | Path) -> str:
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'


class Containerd(Peer):
    """containerd -c CONFIG as root with its own root/state and sockets, CRI disabled."""

    def __init__(
        self,
        workdir: Path | str | None = None,
        *,
        namespace: str = "test",
        snapshotter: str | None = None,
    ) -> None:
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="regcache-containerd-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        # unix socket paths are limited to ~108 bytes; pytest's tmp_path can be longer.
        self.sock_dir = Path(tempfile.mkdtemp(prefix="ctrd-", dir="/tmp"))
        self.address = str(self.sock_dir / "c.sock")
        self.namespace = namespace
        self.snapshotter = snapshotter  # None: overlayfs if it loaded, else native
        self.log_path = self.dir / "containerd.log"
        self.config_path = self.dir / "config.toml"
        self._hosts_dirs = 0
        self._proc: ManagedProcess | None = None
        self.config_path.write_text(
            "\n".join(
                [
                    "version = 2",
                    f"root = {_toml_str(self.dir / 'root')}",
                    f"state = {_toml_str(self.dir / 'state')}",
                    # CRI is not needed: ctr takes --hosts-dir itself; CRI would only add
                    # start-up time and noise (cni, sandbox image).
                    'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
                    "[grpc]",
                    f"  address = {_toml_str(self.address)}",
                    "[ttrpc]",
                    f"  address = {_toml_str(self.address + '.ttrpc')}",
                    '[plugins."io.containerd.internal.v1.opt"]',
                    f"  path = {_toml_str(self.dir / 'opt')}",
                    "",
                ]
            )
        )

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> Containerd:
        if os.geteuid() != 0:
            import pytest

            pytest.skip("containerd needs root")
        proc = ManagedProcess([require("containerd"), "-c", str(self.config_path)], log=self.log_path, cwd=self.dir)
        proc.start()
        self._proc = proc
        on_exit(self, self.close)
        deadline = time.monotonic() + timeout
        while True:
            if not proc.alive():
                err = proc.failure("containerd exited during start-up")
                self.stop()
                raise err
            if os.path.exists(self.address):
                res = self.ctr("version", check=False, timeout=5)
                if res.returncode == 0:
                    break
            if time.monotonic() > deadline:
                err = proc.failure(f"containerd not answering on {self.address}")
                self.stop()
                raise err
            time.sleep(0.02)
        if self.snapshotter is None:
            plugins = self.ctr("plugins", "ls", timeout=10).stdout
            ok = any(
                line.split()[1:2] == ["overlayfs"] and line.split()[-1] == "ok"
                for line in plugins.splitlines()
                if line.startswith("io.containerd.snapshotter.v1")
            )
            self.snapshotter = "overlayfs" if ok else "native"
        return self

    def stop(self) -> None:
        """Stop the daemon (content and snapshots stay for a later start())."""
        if self._proc is not None:
            self._proc.stop(grace=0.5)
            self._proc = None
        self._unmount_under(self.dir)

    def close(self) -> None:
        self.stop()
        on_exit(self, None)
        shutil.rmtree(self.sock_dir, ignore_errors=True)
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    @staticmethod
    def _unmount_under(path: Path) -> None:
        """A kill during unpack can leave an overlay mount under our root: detach it."""
        prefix = str(path.resolve()) + "/"
        try:
            lines = Path("/proc/self/mountinfo").read_text().splitlines()
        except OSError:
            return
        points = [ln.split()[4] for ln in lines if len(ln.split()) > 4]
        for mp in sorted((p for p in points if p.startswith(prefix)), reverse=True):
            subprocess.run(["umount", "-l", mp], capture_output=True, check=False)

    # -- ctr --------------------------------------------------------------------------------
    def ctr(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        timeout: float = 60,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run `ctr -a SOCK -n NAMESPACE args...` without proxy variables (unless in `env`)."""
        argv = [require("ctr"), "-a", self.address, "-n", self.namespace, *args]
        res = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            env=clean_env(**(env or {})),
            timeout=timeout,
            check=False,
        )
        if check and res.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
        return res

    def hosts_dir(
        self,
        mirror_url: str,
        *,
        host: str = "_default",
        server: str | None = None,
        ca: Path | str | None = None,
        skip_verify: bool = False,
        capabilities: Sequence[str] = ("pull", "resolve"),
        override_path: bool = False,
    ) -> Path:
        """A fresh --hosts-dir whose <host>/hosts.toml sends pulls to `mirror_url` first.

        `host` "_default" applies to every registry; a "127.0.0.1:PORT" names one. Without
        `server` containerd falls back to the origin itself (plain HTTP for loopback
        hosts in 1.6); with `server` that URL is the fallback.
        """
        self._hosts_dirs += 1
        root = self.dir / f"hosts-{self._hosts_dirs}"
        lines = []
        if server is not None:
            lines.append(f"server = {_toml_str(server)}")
            lines.append("")
        lines.append(f"[host.{_toml_str(mirror_url)}]")
        lines.append("  capabilities = [" + ", ".join(_toml_str(c) for c in capabilities) + "]")
        if ca is not None:
            lines.append(f"  ca = {_toml_str(ca)}")
        if skip_verify:
            lines.append("  skip_verify = true")
        if override_path:
            lines.append("  override_path = true")
        d = root / host
        d.mkdir(parents=True)
        (d / "hosts.toml").write_text("\n".join(lines) + "\n")
        return root

    def pull(
        self,
        ref: str,
        *,
        hosts_dir: Path | str | None = None,
        plain_http: bool = False,
        user: str | None = None,
        timeout: float = 120,
        platform: str | None = None,
        env: dict[str, str] | None = None,
        http_dump: bool = False,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """`ctr image pull` (fetch + unpack). `user` is "name:password".

        Raises RuntimeError with ctr's output on failure unless check=False.
        """
        args = ["image", "pull"]
        if hosts_dir is not None:
            args.append(f"--hosts-dir={hosts_dir}")
        if plain_http:
            args.append("--plain-http")
        if user is not None:
            args.append(f"--user={user}")
        if platform is not None:
            args.append(f"--platform={platform}")
        if http_dump:
            args.append("--http-dump")
        if self.snapshotter:
            args.append(f"--snapshotter={self.snapshotter}")
        args.append(ref)
        return self.ctr(*args, env=env, timeout=timeout, check=check)

    def images(self) -> list[str]:
        return [ln for ln in self.ctr("images", "ls", "-q").stdout.splitlines() if ln]

    def content(self) -> list[str]:
        """Digests in the content store."""
        return [ln for ln in self.ctr("content", "ls", "-q").stdout.splitlines() if ln]

    def remove_image(self, ref: str) -> None:
        """Remove `ref` and garbage-collect what only it referenced (--sync)."""
        self.ctr("images", "rm", "--sync", ref, check=False)

    def remove_all_content(self) -> None:
        """Forget every image, blob and partial download so the next pull fetches again."""
        refs = self.images()
        if refs:
            self.ctr("images", "rm", "--sync", *refs, check=False)
        digests = self.content()
        if digests:
            self.ctr("content", "rm", *digests, check=False)
        # A failed pull leaves a partial ingest that the next pull would resume with
        # Range; ctr 1.6 cannot delete one, so drop the files of the idle ingests.
        ingest = self.dir / "root" / "io.containerd.content.v1.content" / "ingest"
        if ingest.is_dir():
            for entry in ingest.iterdir():
                shutil.rmtree(entry, ignore_errors=True)
