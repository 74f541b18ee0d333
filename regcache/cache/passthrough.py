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

from dataclasses import dataclass

from regcache.cache.origins import StreamSource, open_range
from regcache.cache.ranges import RangeSpec, Unsatisfiable
from regcache.cache.verifying import VerifyingSource
from regcache.oci.digest import Digest
from regcache.storage.base import ByteSource
from regcache.upstream.client import UpstreamClient, UpstreamRequest, UpstreamResponse


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
    answer = await open_range(upstream, request, wanted)
    if isinstance(answer, UpstreamResponse) and answer.status == 416:
        return _unsatisfiable(answer, wanted)
    return answer


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
