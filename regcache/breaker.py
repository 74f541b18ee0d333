"""A circuit breaker: after a failure, report the peer down for a backoff that doubles with each
failure in a row (up to a cap), so callers skip it at once instead of each waiting for a timeout.

The S3 tier keeps one for the bucket; the replicator keeps one per upload lane to pace its retries;
ECR's token source keeps one per account and region.
"""

from __future__ import annotations

import time
from collections.abc import Callable

BACKOFF_FIRST = 2.0
BACKOFF_MAX = 60.0


class CircuitBreaker:
    def __init__(
        self, first: float = BACKOFF_FIRST, most: float = BACKOFF_MAX, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._first = first
        self._most = most
        self._clock = clock
        self._backoff = first
        self._down_until = 0.0
        self.failures = 0  # in a row

    @property
    def available(self) -> bool:
        return self.retry_in() == 0.0

    def retry_in(self) -> float:
        """Seconds until the peer may be tried again; 0 when it may be tried now."""
        return max(0.0, self._down_until - self._clock())

    def failed(self) -> float:
        """Open the breaker; returns the backoff it waits (doubled for the next failure)."""
        backoff = self._backoff
        self._down_until = self._clock() + backoff
        self._backoff = min(backoff * 2, self._most)
        self.failures += 1
        return backoff

    def succeeded(self) -> bool:
        """Close the breaker; True when that ends a run of failures (worth one log line)."""
        recovered = self.failures > 0
        self.failures = 0
        self._backoff = self._first
        return recovered
