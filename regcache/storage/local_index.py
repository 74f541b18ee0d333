"""What the local tier holds, in least-recently-used order, so it can stay under a size limit.

In S3 mode the local disk is a bounded front for the shared bucket: when it grows past the limit
the least recently used objects go, except those a client is reading or that have not reached S3
yet (pinned). Recency is kept in memory; at start-up files are ordered by their last use (the
later of atime and mtime: hits refresh mtime, see disk.py).
"""

from __future__ import annotations

import os
from collections import Counter, OrderedDict
from pathlib import Path

from regcache import metrics

# Directories of the cache dir that are not objects.
NOT_OBJECTS = frozenset(("staging", "uploads"))


class LocalIndex:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        self._sizes: OrderedDict[str, int] = OrderedDict()
        self._pins: Counter[str] = Counter()

    def load(self, root: Path) -> None:
        """Index what a previous run left, oldest access first."""
        found: list[tuple[float, str, int]] = []
        for dirpath, dirs, files in os.walk(root):
            if dirpath == str(root):
                dirs[:] = [d for d in dirs if d not in NOT_OBJECTS]
            for name in files:
                path = os.path.join(dirpath, name)
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue
                found.append((max(st.st_atime, st.st_mtime), os.path.relpath(path, root), st.st_size))
        for _used, key, size in sorted(found):
            self.add(key, size)

    def add(self, key: str, size: int) -> None:
        self.total -= self._sizes.pop(key, 0)
        self._sizes[key] = size
        self.total += size
        metrics.LOCAL_BYTES.set(self.total)

    def touch(self, key: str) -> None:
        if key in self._sizes:
            self._sizes.move_to_end(key)

    def remove(self, key: str) -> None:
        self.total -= self._sizes.pop(key, 0)
        metrics.LOCAL_BYTES.set(self.total)

    def pin(self, key: str) -> None:
        self._pins[key] += 1

    def unpin(self, key: str) -> None:
        self._pins[key] -= 1
        if self._pins[key] <= 0:
            del self._pins[key]

    def __contains__(self, key: str) -> bool:
        return key in self._sizes

    def __len__(self) -> int:
        return len(self._sizes)

    def victims(self) -> list[str]:
        """Least recently used unpinned keys to drop to get under the limit (removed here)."""
        chosen: list[str] = []
        excess = self.total - self.limit
        for key, size in self._sizes.items():
            if excess <= 0:
                break
            if key in self._pins:
                continue
            chosen.append(key)
            excess -= size
        for key in chosen:
            self.remove(key)
        return chosen
