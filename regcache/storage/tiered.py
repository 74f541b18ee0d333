"""Lookup and commit order across tiers: the first tier that has a key serves it.

With one tier (local disk) this is a thin pass-through; it is the seam the shared S3 tier plugs
into behind the disk.
"""

from __future__ import annotations

import logging

from regcache import metrics
from regcache.storage.base import ObjectReader, StagedObject, Tier

log = logging.getLogger(__name__)


class TieredStore:
    def __init__(self, tiers: list[Tier]) -> None:
        if not tiers:
            raise ValueError("at least one tier")
        self.tiers = tiers
        self.local = tiers[0]

    async def open(self, key: str) -> tuple[ObjectReader, str] | None:
        """The object from the first tier that has it, and that tier's name."""
        for tier in self.tiers:
            try:
                reader = await tier.open(key)
            except OSError as exc:
                self._failed(tier, "open", key, exc)
                continue
            if reader is not None:
                return reader, tier.name
        return None

    async def read_small(self, key: str) -> bytes | None:
        for tier in self.tiers:
            try:
                data = await tier.read_small(key)
            except OSError as exc:
                self._failed(tier, "read", key, exc)
                continue
            if data is not None:
                return data
        return None

    async def put_small(self, key: str, data: bytes) -> bool:
        stored = False
        for tier in self.tiers:
            try:
                await tier.put_small(key, data)
                stored = True
            except OSError as exc:
                self._failed(tier, "write", key, exc)
        return stored

    async def commit(self, key: str, staged: StagedObject) -> bool:
        try:
            await self.local.commit(key, staged)
            return True
        except OSError as exc:
            self._failed(self.local, "commit", key, exc)
            return False

    async def delete(self, key: str) -> None:
        for tier in self.tiers:
            try:
                await tier.delete(key)
            except OSError as exc:
                self._failed(tier, "delete", key, exc)

    @staticmethod
    def _failed(tier: Tier, op: str, key: str, exc: OSError) -> None:
        metrics.STORAGE_ERRORS.labels(tier.name, op).inc()
        log.warning("storage %s: %s %s failed: %s", tier.name, op, key, exc)
