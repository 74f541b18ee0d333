"""What part of a blob a client asked for (pure): one byte range is honoured; anything else
(several ranges, a malformed header, an `If-Range` that does not name the blob) serves the whole
body, as RFC 9110 lets a server ignore a Range it does not support.

containerd sends one `bytes=<offset>-` when it resumes, and 2.1+ one per chunk when it fetches a
layer in parallel (chunk 0 asks `bytes=0-`): every answer to those must be a 206 naming its range.
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

    @property
    def from_start(self) -> bool:
        """`bytes=0-`: the whole object, asked as a range (chunk 0 of a parallel download)."""
        return self.first == 0 and self.last is None

    def header(self) -> str:
        """The Range header asking for the same bytes (of an upstream)."""
        first = "" if self.first is None else str(self.first)
        last = "" if self.last is None else str(self.last)
        return f"bytes={first}-{last}"

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


def honoured_range(range_header: str | None, if_range: str | None, etag: str) -> RangeSpec | None:
    """The range to serve, or None for the whole body. An `If-Range` honours the Range only
    when it names this object's entity tag (strong comparison, RFC 9110 13.1.5); a date never
    matches, since a blob's answer carries no Last-Modified."""
    if if_range is not None and if_range.strip() != etag:
        return None
    return parse_range(range_header)
