"""A blob the cache cannot store (its storage is broken): the registry's bytes, passed on.

The whole object (asked without a Range, or as `bytes=0-`, chunk 0 of a parallel download) is
read from byte 0 and verified on the way: size and sha256, the last byte held back until both
agree. Any other range is asked of the registry with the same Range and its 206 is passed on
once its Content-Range says it is the range asked; a registry that ignores the Range answers
200, and the bytes before the range are read and dropped (bounded memory, never buffered).
A part of an object cannot be checked against the object's digest: such bytes are as good as
the registry's, and the client checks the layer it puts together from its chunks (containerd
verifies every layer's digest). Nothing here is stored or shared.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from regcache.cache.origins import StreamSource
from regcache.cache.ranges import ByteRange, RangeSpec, Unsatisfiable
from regcache.cache.verifying import VerifyingSource
from regcache.errors import UpstreamError
from regcache.oci.digest import Digest
from regcache.storage.base import ByteSource
from regcache.upstream.client import UpstreamClient, UpstreamRequest, UpstreamResponse, UpstreamStream


@dataclass(frozen=True)
class Unsatisfied:
    """The range starts past the end of the registry's object of `size` bytes: the client gets
    the cache's own 416, as for a stored blob."""

    size: int


async def open_uncached(
    upstream: UpstreamClient, request: UpstreamRequest, digest: Digest, wanted: RangeSpec | None
) -> ByteSource | Unsatisfied | UpstreamResponse:
    """The blob's bytes from the registry for the range the client asked (None: all of it), or
    the registry's non-2xx answer to pass on."""
    if wanted is None or wanted.from_start:
        whole = await upstream.open(request)
        if isinstance(whole, UpstreamResponse):
            return whole
        return VerifyingSource(StreamSource(whole, 0, whole.size), digest, request.registry)
    return await _open_part(upstream, replace(request, headers={**request.headers, "Range": wanted.header()}), wanted)


async def _open_part(
    upstream: UpstreamClient, request: UpstreamRequest, wanted: RangeSpec
) -> ByteSource | Unsatisfied | UpstreamResponse:
    answer = await upstream.open(request)
    if isinstance(answer, UpstreamResponse):
        return _unsatisfiable(answer, wanted) if answer.status == 416 else answer
    if answer.status != 206:
        return StreamSource(answer, 0, answer.size)  # the registry ignored the Range: skip to it
    start, size = await _checked_part(answer, wanted, request.registry)
    return StreamSource(answer, start, size)


async def _checked_part(answer: UpstreamStream, wanted: RangeSpec, registry: str) -> tuple[int, int]:
    """Where a 206 starts and the object's size, when it is the range asked; else an error
    (the answer is closed): a client must never get bytes from another place than it asked."""
    got = answer.headers.get("Content-Range", "")
    unit, _, rest = got.strip().partition(" ")
    span, _, total = rest.partition("/")
    first, _, last = span.partition("-")
    try:
        if unit != "bytes" or not (first.isdigit() and last.isdigit() and total.isdigit()):
            raise ValueError(got)
        size = int(total)
        expected = wanted.resolve(size)
        if expected != ByteRange(int(first), int(last) + 1) or answer.size not in (None, expected.length):
            raise ValueError(got)
    except (ValueError, Unsatisfiable):
        await answer.aclose()
        raise UpstreamError(
            registry, f"answered {got or 'a 206 without Content-Range'} to Range {wanted.header()}"
        ) from None
    return expected.start, size


def _unsatisfiable(answer: UpstreamResponse, wanted: RangeSpec) -> Unsatisfied | UpstreamResponse:
    """A 416 whose `Content-Range: bytes */<size>` agrees that the range is past the end."""
    unit, _, rest = answer.headers.get("Content-Range", "").strip().partition(" ")
    total = rest.removeprefix("*/")
    if unit == "bytes" and rest.startswith("*/") and total.isdigit():
        try:
            wanted.resolve(int(total))
        except Unsatisfiable:
            return Unsatisfied(int(total))
    return answer
