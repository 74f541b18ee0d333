"""A cache filled by real pulls, for the operator's commands: two registries on loopback, images
with an index, shared layers and several tags, pulled through a running regcache the way
containerd pulls (tag → index → this platform's manifest → config and layers).

`ops/web:1.0` is an index over an amd64 and an arm64 image; `ops/web:2.0` shares its base layer;
`ops/db:1` has layers of its own; the second registry serves `mirror/web:1.0`, the same bytes as
the first one's `ops/web:1.0`, so its blobs are referenced by two registries.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.peers.images import Image, Index, build_image, build_index, host_architecture, push, random_layer
from tests.peers.net import clean_env
from tests.peers.registry import Registry
from tests.support import ROOT, Regcache, wait_until

MIB = 1024 * 1024


@dataclass
class OperatorImages:
    first: Registry
    second: Registry
    web: Index  # ops/web:1.0 (and mirror/web:1.0 on the second registry)
    web_here: Image  # its platform image for this host
    web2: Image  # ops/web:2.0, shares the base layer
    db: Image  # ops/db:1

    def upstream_args(self) -> list[str]:
        return [arg for r in (self.first, self.second) for arg in ("--upstream", f"{r.host}={r.url}")]

    def close(self) -> None:
        self.first.close()
        self.second.close()


def build(workdir: Path) -> OperatorImages:
    layout = workdir / "layout"
    base = random_layer(2 * MIB, seed=11)
    arch = host_architecture()
    other_arch = "arm64" if arch != "arm64" else "amd64"
    web_here = build_image(layout, [base, random_layer(1 * MIB, seed=12)], "web-here", labels={"app": "web"})
    web_other = build_image(
        layout, [base, random_layer(1 * MIB, seed=13)], "web-other", architecture=other_arch, labels={"app": "web"}
    )
    web = build_index(layout, [web_here, web_other], "web")
    web2 = build_image(layout, [base, random_layer(MIB // 2, seed=14)], "web2", labels={"app": "web", "v": "2"})
    db = build_image(layout, [random_layer(3 * MIB, seed=15)], "db", labels={"app": "db"})
    first = Registry(workdir / "first").start()
    second = Registry(workdir / "second").start()
    push(web, f"{first.host}/ops/web:1.0")
    push(web2, f"{first.host}/ops/web:2.0")
    push(db, f"{first.host}/ops/db:1")
    push(web, f"{second.host}/mirror/web:1.0")
    return OperatorImages(first, second, web, web_here, web2, db)


def pull(cache: Regcache, registry: str, repo: str, tag: str) -> list[str]:
    """Pull as containerd does; returns the digests fetched (manifests, config, layers)."""
    answer = cache.manifest(registry, repo, tag)
    assert answer.status == 200, (answer.status, answer.body)
    fetched = [answer.header("Docker-Content-Digest") or ""]
    manifest = json.loads(answer.body)
    if "manifests" in manifest:
        mine = next(m for m in manifest["manifests"] if m["platform"]["architecture"] == host_architecture())
        answer = cache.manifest(registry, repo, mine["digest"])
        assert answer.status == 200, (answer.status, answer.body)
        fetched.append(mine["digest"])
        manifest = json.loads(answer.body)
    for descriptor in [manifest["config"], *manifest["layers"]]:
        blob = cache.blob(registry, repo, descriptor["digest"])
        assert blob.status == 200 and len(blob.body) == descriptor["size"], blob.status
        fetched.append(descriptor["digest"])
    # A client has the last byte once the download verified, a moment before it is committed:
    # the commands read what is stored, so wait for that.
    assert wait_until(lambda: cache.metrics().get("regcache_fills_in_flight") == 0)
    return fetched


def fill(cache: Regcache, images: OperatorImages) -> None:
    pull(cache, images.first.host, "ops/web", "1.0")
    pull(cache, images.first.host, "ops/web", "2.0")
    pull(cache, images.first.host, "ops/db", "1")
    pull(cache, images.second.host, "mirror/web", "1.0")


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()

    def json(self) -> object:
        return json.loads(self.out)


def regcache(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Run:
    """`python -m regcache <args>` as an operator runs it."""
    done = subprocess.run(
        [sys.executable, "-m", "regcache", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=clean_env(**(env or {})),
        timeout=timeout,
    )
    return Run(done.returncode, done.stdout, done.stderr)


def age(path: Path, days: float) -> None:
    """Make a stored file look last used `days` ago (what a month without pulls leaves)."""
    when = os.path.getmtime(path) - days * 86400
    os.utime(path, (when, when))


def row(run: Run, *cells: str) -> str:
    """The one output line that has all these cells (as whitespace-separated words)."""
    found = [line for line in run.lines if all(cell in line.split() for cell in cells)]
    assert len(found) == 1, (cells, run.out)
    return found[0]
