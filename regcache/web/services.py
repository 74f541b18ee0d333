"""What the handlers are given: one typed value, built once by app.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from regcache.cache.blobs import BlobService
from regcache.cache.lists import ListService
from regcache.cache.manifests import ManifestService
from regcache.storage.disk import DiskTier
from regcache.storage.health import StorageHealth
from regcache.upstream.guard import AddressGuard


class Tracker(Protocol):
    """Counts requests in progress, so that shutdown can wait for them."""

    def started(self) -> None: ...

    def finished(self) -> None: ...


@dataclass(frozen=True)
class Services:
    blobs: BlobService
    manifests: ManifestService
    lists: ListService
    disk: DiskTier
    health: StorageHealth
    guard: AddressGuard | None = None
    # Registry names given by --upstream (and docker.io): a path starting with one names it.
    upstream_names: frozenset[str] = frozenset()
    tracker: Tracker | None = None
    client_idle_timeout: float | None = None
