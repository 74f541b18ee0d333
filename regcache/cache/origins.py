"""Where a fill gets an object's bytes: the registry, the shared S3 tier, or S3 then the registry.

An origin is opened once at byte 0 and, when its stream breaks off, opened again where the spool
stopped: a Range request upstream, a ranged GET from S3. Resuming is the origin's business, so
the fill only pulls chunks and counts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Protocol

from regcache.cache.ranges import ByteRange, RangeSpec, Unsatisfiable
from regcache.errors import DigestMismatch, RegcacheError, SizeMismatch, UpstreamError
from regcache.storage.base import ByteSource
from regcache.storage.tiered import TieredStore
from regcache.upstream.client import UpstreamClient, UpstreamRequest, UpstreamResponse
from regcache.upstream.transport import Exchange

log = logging.getLogger(__name__)


class CannotResume(UpstreamError):
    """The origin refused to continue a download (a non-2xx answer to the Range request)."""


class Origin(Protocol):
    @property
    def name(self) -> str:
        """ "upstream" or "s3": the metrics' source label, and whether a commit is replicated."""

    async def open(self) -> ByteSource | UpstreamResponse:
        """The object from byte 0, or the registry's non-2xx answer to pass on."""

    async def resume(self, offset: int, size: int) -> ByteSource:
        """The object of `size` bytes again, for reading from `offset` on."""

    def failed(self, error: RegcacheError) -> None:
        """The download failed: an origin that served wrong bytes can forget them."""


class UpstreamOrigin:
    name = "upstream"

    def __init__(self, client: UpstreamClient, request: UpstreamRequest) -> None:
        self._client = client
        self._request = request

    async def open(self) -> ByteSource | UpstreamResponse:
        answer = await self._client.open(self._request)
        if isinstance(answer, UpstreamResponse):
            return answer
        return StreamSource(answer, 0, answer.size)

    async def resume(self, offset: int, size: int) -> ByteSource:
        registry = self._request.registry
        answer = await open_range(self._client, self._request, RangeSpec(offset, None))
        if isinstance(answer, UpstreamResponse):
            raise CannotResume(registry, f"cannot resume at byte {offset}: answered {answer.status}")
        if answer.size != size:
            await answer.aclose()
            raise UpstreamError(registry, f"cannot resume at byte {offset}: the object is now {answer.size} bytes")
        return answer

    def failed(self, error: RegcacheError) -> None:
        pass


class StreamSource:
    """An upstream answer as a ByteSource: read once, from the offset its bytes start at (the
    bytes before `start` of an answer that starts earlier are dropped)."""

    def __init__(self, stream: Exchange, base: int, size: int | None) -> None:
        self.size = size
        self._stream = stream
        self._base = base

    async def chunks(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        skip = start - self._base
        position = start
        async for chunk in self._stream.chunks():
            if skip > 0:
                dropped = min(skip, len(chunk))
                skip -= dropped
                chunk = chunk[dropped:]
                if not chunk:
                    continue
            if end is not None and position + len(chunk) >= end:
                yield chunk[: end - position]
                return
            position += len(chunk)
            yield chunk

    async def aclose(self) -> None:
        await self._stream.aclose()


async def open_range(
    upstream: UpstreamClient, request: UpstreamRequest, wanted: RangeSpec
) -> StreamSource | UpstreamResponse:
    """The registry's bytes for `wanted`, from where it starts, or its non-2xx answer. A registry
    that ignores the Range answers 200: the bytes before the range are read and dropped."""
    answer = await upstream.open(replace(request, headers={**request.headers, "Range": wanted.header()}))
    if isinstance(answer, UpstreamResponse) or answer.status != 206:
        return answer if isinstance(answer, UpstreamResponse) else StreamSource(answer, 0, answer.size)
    got = answer.headers.get("Content-Range", "")
    unit, _, rest = got.strip().partition(" ")
    span, _, total = rest.partition("/")
    first, _, last = span.partition("-")
    try:
        if unit != "bytes" or not (first.isdigit() and last.isdigit() and total.isdigit()):
            raise ValueError(got)
        expected = wanted.resolve(int(total))
        if expected != ByteRange(int(first), int(last) + 1) or answer.size not in (None, expected.length):
            raise ValueError(got)
    except (ValueError, Unsatisfiable):
        # A client must never get bytes from another place than it asked.
        await answer.aclose()
        message = f"answered {got or 'a 206 without Content-Range'} to Range {wanted.header()}"
        raise UpstreamError(request.registry, message) from None
    return StreamSource(answer, expected.start, int(total))


class S3Origin:
    """An object in the shared tier; one that fails verification is deleted from it, so the
    next pull fetches it from the registry."""

    name = "s3"

    def __init__(self, store: TieredStore, key: str) -> None:
        self._store = store
        self._key = key
        self._cleanup: asyncio.Task[None] | None = None

    async def open(self) -> ByteSource:
        source = await self._store.open_shared(self._key)
        if source is None:
            raise FileNotFoundError(f"S3 has no {self._key}")
        return source

    async def resume(self, offset: int, size: int) -> ByteSource:
        return await self.open()

    def failed(self, error: RegcacheError) -> None:
        if isinstance(error, (DigestMismatch, SizeMismatch)) and self._cleanup is None:
            log.warning("S3 object %s failed verification (%s); deleting it", self._key, error)
            self._cleanup = asyncio.get_running_loop().create_task(self._store.delete_shared(self._key))


class FallbackOrigin:
    """S3, and the registry when S3 cannot deliver: before the first byte, or to continue a copy
    it broke off."""

    def __init__(self, first: Origin, then: Origin) -> None:
        self._current = first
        self._then = then

    @property
    def name(self) -> str:
        return self._current.name

    async def open(self) -> ByteSource | UpstreamResponse:
        try:
            source = await self._current.open()
            if isinstance(source, UpstreamResponse):
                return source
            return await PrimedSource.start(source)
        except (OSError, RegcacheError) as exc:
            log.debug("%s cannot deliver it (%s); asking the registry", self._current.name, exc)
        self._current = self._then
        return await self._current.open()

    async def resume(self, offset: int, size: int) -> ByteSource:
        if self._current is not self._then:
            try:
                return await self._current.resume(offset, size)
            except (OSError, RegcacheError) as exc:
                log.debug("%s cannot continue (%s); asking the registry", self._current.name, exc)
            self._current = self._then
        return await self._current.resume(offset, size)

    def failed(self, error: RegcacheError) -> None:
        self._current.failed(error)


class PrimedSource:
    """A source whose first chunk has already arrived: a failure before the first byte is
    found while another origin can still take over, not once the client was answered."""

    def __init__(self, source: ByteSource, rest: AsyncIterator[bytes], first: bytes) -> None:
        self.size = source.size
        self._source = source
        self._rest: AsyncIterator[bytes] | None = rest
        self._first = first

    @classmethod
    async def start(cls, source: ByteSource) -> PrimedSource:
        rest = source.chunks()
        try:
            first = await anext(rest)
        except StopAsyncIteration:
            first = b""
        except BaseException:
            await source.aclose()
            raise
        return cls(source, rest, first)

    async def chunks(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        rest, self._rest = self._rest, None
        if rest is None or start != 0 or end is not None:
            async for chunk in self._source.chunks(start, end):
                yield chunk
            return
        if self._first:
            yield self._first
        async for chunk in rest:
            yield chunk

    async def aclose(self) -> None:
        await self._source.aclose()
