"""Range header parsing (pure). One byte range is honoured; anything else serves the whole body.

RFC 9110 lets a server ignore a Range it does not support, and clients such as containerd only
send a single `bytes=<offset>-` when they resume.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*([0-9]*)\s*-\s*([0-9]*)\s*$")


@dataclass(frozen=True)
class ByteRange:
    """Inclusive start, exclusive end, as resolved against a known size."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end - 1}/{size}"


class Unsatisfiable(Exception):
    """The range starts at or past the end of the object: 416."""


@dataclass(frozen=True)
class RangeSpec:
    """A parsed `bytes=a-b`, `bytes=a-` or `bytes=-n`, not yet resolved against a size."""

    first: int | None
    last: int | None

    def resolve(self, size: int) -> ByteRange:
        if self.first is None:
            # Suffix range: the last n bytes.
            assert self.last is not None
            if self.last == 0 or size == 0:
                raise Unsatisfiable()  # no last byte to give (RFC 9110 14.1.2)
            return ByteRange(max(0, size - self.last), size)
        if self.first >= size:
            raise Unsatisfiable()
        end = size if self.last is None else min(self.last + 1, size)
        return ByteRange(self.first, end)


def parse_range(header: str | None) -> RangeSpec | None:
    """A single byte range, or None when there is none we honour (absent, multiple, malformed)."""
    if not header or len(header) > 200:
        return None
    match = _RANGE_RE.match(header)
    if not match:
        return None
    first_text, last_text = match.groups()
    if not first_text and not last_text:
        return None
    first = int(first_text) if first_text else None
    last = int(last_text) if last_text else None
    if first is not None and last is not None and last < first:
        return None
    return RangeSpec(first, last)
