"""Shared fixtures: a real upstream registry with images the tests build, and regcache processes."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fakes import FakeUpstream
from tests.peers.images import Image, build_image, make_layer, push, random_layer
from tests.peers.registry import Registry
from tests.support import Regcache

REPO = "test/app"
BIG_REPO = "test/big"
BIG_SIZE = 72 * 1024 * 1024


@dataclass
class Upstream:
    """A distribution registry on loopback holding the test images."""

    registry: Registry
    app: Image  # test/app:1.0 and :latest and :dev-1
    app2: Image  # test/app:2.0, other config, shares layers with app
    big: Image  # test/big:1, one 72 MiB layer

    @property
    def ns(self) -> str:
        return self.registry.host

    def upstream_arg(self) -> list[str]:
        return ["--upstream", f"{self.ns}={self.registry.url}"]


@pytest.fixture(scope="session")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    layout = tmp_path_factory.mktemp("layout")
    layers = [
        make_layer({"etc/hello.txt": b"hello from regcache tests\n"}),
        make_layer({"bin/tool": b"#!/bin/sh\necho tool\n"}),
        random_layer(3 * 1024 * 1024, seed=1),
    ]
    app = build_image(layout, layers, "1.0")
    app2 = build_image(layout, layers[:2], "2.0", labels={"version": "2"})
    big = build_image(layout, [random_layer(BIG_SIZE, seed=2)], "1")
    registry = Registry(tmp_path_factory.mktemp("upstream")).start()
    for tag in ("1.0", "latest", "dev-1"):
        push(app, f"{registry.host}/{REPO}:{tag}")
    push(app2, f"{registry.host}/{REPO}:2.0")
    push(big, f"{registry.host}/{BIG_REPO}:1")
    yield Upstream(registry, app, app2, big)
    registry.close()


@pytest.fixture
def make_regcache() -> Iterator[Callable[..., Regcache]]:
    """Start regcache processes with the given options; all are stopped after the test."""
    started: list[Regcache] = []

    def start(*args: str, env: dict[str, str] | None = None, cache_dir: Path | None = None) -> Regcache:
        instance = Regcache(list(args), env or {}, cache_dir)
        started.append(instance)
        return instance.start()

    yield start
    for instance in started:
        instance.stop(grace=5)


@pytest.fixture
def cache(make_regcache: Callable[..., Regcache], upstream: Upstream) -> Regcache:
    """regcache with defaults, its upstream map naming the test registry."""
    return make_regcache(*upstream.upstream_arg())


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    """An in-process upstream for failures a real registry cannot be made to produce."""
    upstream = FakeUpstream()
    yield upstream
    upstream.close()


@pytest.fixture
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="regcache-scratch-") as path:
        yield Path(path)
