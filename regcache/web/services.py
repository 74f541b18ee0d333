"""What the handlers are given: one typed value, built once by app.py."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from regcache.cache.blobs import BlobService
from regcache.cache.lists import ListService
from regcache.cache.manifests import ManifestService
from regcache.storage.disk import DiskTier
from regcache.storage.health import StorageHealth
from regcache.upstream.guard import AddressGuard


class RequestTracker:
    """Counts requests in progress so shutdown can wait for them."""

    def __init__(self) -> None:
        self.active = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def started(self) -> None:
        self.active += 1
        self._idle.clear()

    def finished(self) -> None:
        self.active -= 1
        if self.active <= 0:
            self.active = 0
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False


@dataclass(frozen=True)
class Services:
    blobs: BlobService
    manifests: ManifestService
    lists: ListService
    disk: DiskTier
    health: StorageHealth
    guard: AddressGuard
    # Registry names given by --upstream (and docker.io): a path starting with one names it.
    upstream_names: frozenset[str]
    tracker: RequestTracker
    client_idle_timeout: float
