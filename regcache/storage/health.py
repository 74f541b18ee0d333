"""Recent failures of the cache's own storage: for /readyz, and one log line a minute at most.

A pull whose download the cache cannot take (a full disk, an unwritable cache dir) goes around
the cache instead of failing; operators need to hear about it without a line per download.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)

REPORT_INTERVAL = 60.0


class StorageHealth:
    def __init__(self) -> None:
        self.last_failure: float | None = None
        self.reason = ""
        self._last_report = float("-inf")
        self._unreported = 0

    def failed(self, reason: str) -> None:
        """A pull went around the cache because storage failed; log at most once a minute."""
        now = time.monotonic()
        self.last_failure, self.reason = now, reason
        self._unreported += 1
        if now - self._last_report >= REPORT_INTERVAL:
            log.warning(
                "cache storage unavailable (%s): %d download(s) passed through uncached since the last report",
                reason,
                self._unreported,
            )
            self._last_report, self._unreported = now, 0

    def trouble(self) -> str | None:
        """The reason storage failed within the last minute, if it did."""
        if self.last_failure is not None and time.monotonic() - self.last_failure < REPORT_INTERVAL:
            return self.reason
        return None
