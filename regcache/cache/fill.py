"""One download into a spool, shared by every client that asks for the object.

A fill runs as its own task: clients are only readers of its spool, so a client that
disconnects never cancels it, and a slow client never slows it. It pulls: it opens its origin,
copies the chunks into the spool, and when the origin breaks off it opens it again at the
spool's size (a Range request upstream, a ranged GET from S3). Once the spool has verified, the
object is committed and the fill leaves the in-flight map.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from regcache import metrics
from regcache.cache.origins import CannotResume, Origin
from regcache.cache.spool import Spool, SpoolReader
from regcache.errors import Offline, Overloaded, RegcacheError, StorageError, UpstreamError
from regcache.storage.base import ByteSource
from regcache.upstream.client import UpstreamResponse

log = logging.getLogger(__name__)

# Times a download the origin broke off is continued where it stopped, before it is given up.
MAX_RESUMES = 2

Commit = Callable[[Spool, str], Awaitable[bool]]


@dataclass(frozen=True)
class FillHead:
    """What the origin answered, known before the body: a 2xx of `size` bytes from `origin`, or
    an answer to pass on as it is (`passed`)."""

    origin: str = "upstream"
    size: int | None = None
    passed: UpstreamResponse | None = None


class Fill:
    def __init__(
        self, key: str, spool: Spool, origin: Origin, commit: Commit | None, identity: tuple[str, ...] = ()
    ) -> None:
        self.key = key
        # Whose request started it: an error answer belongs to that request alone (a 401 with
        # another repository's challenge, a 404 in another registry); other clients ask again.
        self.identity = identity
        self.spool = spool
        self.registry = spool.registry
        self.head: asyncio.Future[FillHead] = asyncio.get_running_loop().create_future()
        self.committed = False
        self.readers = 0
        self._origin = origin
        self._commit = commit

    def reader(self, max_readers: int | None) -> SpoolReader:
        """A reader of the spool; Overloaded when the fill already has its maximum of readers."""
        if max_readers is not None and self.readers >= max_readers:
            metrics.OVERLOADED.labels("fill-clients").inc()
            raise Overloaded(f"{self.readers} clients are already reading this download; fetch it from the registry")
        self.readers += 1
        return SpoolReader(self.spool, on_close=self._reader_left)

    def _reader_left(self) -> None:
        self.readers -= 1

    async def run(self) -> None:
        started = time.monotonic()
        metrics.FILLS_IN_FLIGHT.inc()
        try:
            source = await self._open()
            if source is not None:
                await self._copy(self._origin, source)
                await self.spool.finish()
                if self._commit is not None:
                    self.committed = await self._commit(self.spool, self._origin.name)
                log.info(
                    "fill %s from %s: %d bytes in %.2fs%s",
                    self.key,
                    self.registry if self._origin.name == "upstream" else self._origin.name,
                    self.spool.written,
                    time.monotonic() - started,
                    "" if self._commit is None or self.committed else " (not stored)",
                )
        except RegcacheError as exc:
            self._fail(exc)
        except Exception as exc:  # a task boundary: log, count, and fail the readers cleanly
            log.exception("fill %s from %s failed", self.key, self.registry)
            self._fail(UpstreamError(self.registry, f"internal error: {exc}"))
        finally:
            metrics.FILLS_IN_FLIGHT.dec()
            await self.spool.close(keep=self.committed)

    async def _open(self) -> ByteSource | None:
        """The origin's answer: a source to copy (the head says its size), or None when the
        registry's non-2xx answer goes to the client as it is (nothing is stored)."""
        answer = await self._origin.open()
        if isinstance(answer, UpstreamResponse):
            self.head.set_result(FillHead(self._origin.name, len(answer.body), passed=answer))
            return None
        try:
            self.spool.expect(answer.size)
        except StorageError:
            await answer.aclose()
            raise
        self.head.set_result(FillHead(self._origin.name, answer.size))
        return answer

    async def _copy(self, origin: Origin, source: ByteSource | None) -> None:
        resumes = 0
        while True:
            try:
                if source is None:
                    source = await origin.resume(self.spool.received, self.spool.size or 0)
                async for chunk in source.chunks(self.spool.received):
                    await self.spool.append(chunk)
                return
            except (UpstreamError, OSError) as exc:
                if isinstance(exc, CannotResume) or not self._resumable(resumes):
                    if isinstance(exc, UpstreamError):
                        raise
                    raise UpstreamError(origin.name, f"the copy from {origin.name} broke off: {exc}") from None
                resumes += 1
                log.warning(
                    "fill %s: %s after %d of %d bytes; resuming with a Range request (%d of %d)",
                    self.key,
                    exc,
                    self.spool.received,
                    self.spool.size,
                    resumes,
                    MAX_RESUMES,
                )
                metrics.FILL_RESUMES.labels(metrics.registry_label(self.registry)).inc()
            finally:
                if source is not None:
                    await source.aclose()
            source = None

    def _resumable(self, resumes: int) -> bool:
        """Whether a broken download can go on where it stopped: its length is known, and
        neither it nor its storage has failed otherwise."""
        spool = self.spool
        if resumes >= MAX_RESUMES or spool.error is not None or spool.size is None:
            return False
        return 0 < spool.received < spool.size

    def _fail(self, error: RegcacheError) -> None:
        if self.spool.error is None:
            # Storage failures are reported once a minute (storage/health.py), not per download;
            # an offline miss is no failure at all (its request's log line says 404).
            level = logging.DEBUG if isinstance(error, (StorageError, Offline)) else logging.WARNING
            log.log(level, "fill %s: %s; nothing stored", self.key, error)
        self.spool.fail(error)
        self._origin.failed(error)
        if not self.head.done():
            self.head.set_exception(error)
            self.head.exception()  # retrieved here; readers re-raise it


class FillMap:
    """The single-flight map: at most one fill per key at a time."""

    def __init__(self, max_fills: int | None = None, max_readers: int | None = None) -> None:
        self._fills: dict[str, Fill] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._max_fills = max_fills
        self.max_readers = max_readers

    def get(self, key: str) -> Fill | None:
        return self._fills.get(key)

    def admit(self) -> None:
        """Overloaded when no more downloads may start (call before creating one)."""
        if self._max_fills is not None and len(self._tasks) >= self._max_fills:
            metrics.OVERLOADED.labels("fills").inc()
            raise Overloaded(f"{len(self._tasks)} downloads in flight; fetch it from the registry")

    def start(self, fill: Fill) -> None:
        """Run the fill as its own task; later clients of its key join it, unless another fill
        of that key is still in the map (one whose answer was not theirs)."""
        if fill.key not in self._fills:
            self._fills[fill.key] = fill

        async def run() -> None:
            try:
                await fill.run()
            finally:
                if self._fills.get(fill.key) is fill:
                    del self._fills[fill.key]

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
