"""How the operator's commands print: aligned tables for people, JSON for scripts."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence

from regcache.oci.digest import Digest

_UNITS = ("KiB", "MiB", "GiB", "TiB")


def human_size(size: int) -> str:
    """Binary units, as --max-size and --local-cache-size take them: 512 B, 3.0 MiB, 1.2 GiB."""
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in _UNITS:
        value /= 1024
        if value < 1024 or unit == _UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def span(seconds: float) -> str:
    """A duration in the largest unit that fits: 40s, 12m, 5h, 41d."""
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{int(seconds // length)}{unit}"
    return f"{int(max(0.0, seconds))}s"


def ago(when: float, now: float) -> str:
    return span(now - when) + " ago"


def iso(when: float) -> str:
    """UTC, to the second, for JSON: 2026-12-02T14:00:00Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def short_digest(digest: Digest | str | None, full: bool = False) -> str:
    """sha256: and 12 hex digits, as docker shows image ids; the whole digest with `full`."""
    if digest is None:
        return "-"
    text = str(digest)
    algorithm, _, encoded = text.partition(":")
    return text if full or len(encoded) <= 12 else f"{algorithm}:{encoded[:12]}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """Columns padded to their widest cell; the columns in `right` (numbers) aligned right."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)]
    lines = []
    for row in (headers, *rows):
        cells = [
            str(cell).rjust(width) if index in right else str(cell).ljust(width)
            for index, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def count(number: int, noun: str) -> str:
    """3 blobs, 1 tag."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def print_json(value: object) -> None:
    json.dump(value, sys.stdout, indent=2)
    sys.stdout.write("\n")
