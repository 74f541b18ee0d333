"""What the operator sees: progress while it runs (one line per image, redrawn on a terminal,
plain lines otherwise) and the summary table at the end."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from typing import TextIO

from regcache.commands.output import human_size, table
from regcache.commands.prefetch.walk import BlobState, ImageState


def progress_line(state: ImageState) -> str:
    name = str(state.reference)
    if state.phase == "failed":
        return f"{name}  FAILED: {state.error}"
    platforms = ",".join(state.platforms) or "-"
    blobs = list(state.blobs.values())
    if state.phase == "done":
        return f"{name}  done  {platforms}  {len(blobs)} blobs  {human_size(state.total_bytes)}  {_cached_words(state)}"
    if state.phase in ("waiting", "resolving", "manifests"):
        return f"{name}  {state.phase}"
    done = sum(1 for blob in blobs if blob.done)
    sizes = f"{human_size(state.received_bytes)} / {human_size(state.total_bytes)}"
    # A single-platform image says its platform in its config, known once that has arrived.
    shown = f"  {platforms}" if state.platforms else ""
    return f"{name}{shown}  {done}/{len(blobs)} blobs  {sizes}"


def resolved_line(state: ImageState) -> str:
    platforms = ",".join(state.platforms) or "its platform"
    blobs = f"{len(state.blobs)} blobs, {human_size(state.total_bytes)}"
    return f"{state.reference}  {state.digest}  {platforms}: {blobs}"


def _cached_words(state: ImageState) -> str:
    said = [blob for blob in state.blobs.values() if blob.cache is not None]
    if not said:
        return "(the cache did not say what it had)"
    return f"({len(state.blobs_with('hit'))} cached before, {len(state.blobs_with('miss'))} fetched now)"


class Progress:
    """Redraws the images in progress at the bottom of a terminal; finished images are written
    once, above them. Not on a terminal: one plain line per image as it finishes."""

    def __init__(self, stream: TextIO, live: bool) -> None:
        self._stream = stream
        self._live = live
        self._drawn = 0
        self._reported: set[int] = set()
        self._started: set[int] = set()

    def update(self, states: Sequence[ImageState]) -> None:
        finished = [s for s in states if s.finished and id(s) not in self._reported]
        self._reported.update(id(s) for s in finished)
        if not self._live:
            # A log gets two lines an image: what it resolved to, and how it ended.
            for state in states:
                walked = state.phase in ("blobs", "done") or (state.phase == "failed" and state.blobs)
                if walked and id(state) not in self._started:
                    self._started.add(id(state))
                    self._stream.write(resolved_line(state) + "\n")
            for state in finished:
                self._stream.write(progress_line(state) + "\n")
            self._stream.flush()
            return
        width = max(shutil.get_terminal_size((100, 24)).columns - 1, 20)
        out = []
        if self._drawn:
            out.append(f"\x1b[{self._drawn}F")  # to the start of the first line drawn last time
        for state in finished:
            out.append("\x1b[2K" + progress_line(state) + "\n")
        running = [s for s in states if not s.finished and s.phase != "waiting"]
        for state in running:
            # Cut to the width: a wrapped line would throw off the redraw.
            out.append("\x1b[2K" + progress_line(state)[:width] + "\n")
        out.append("\x1b[J")  # clear what the last drawing had below
        self._drawn = len(running)
        self._stream.write("".join(out))
        self._stream.flush()


def summary_table(states: Sequence[ImageState]) -> str:
    """The table printed at the end, then one line per failure with its reason."""
    rows = []
    for state in states:
        blobs = list(state.blobs.values())
        said = any(blob.cache is not None for blob in blobs)
        hits, misses = state.blobs_with("hit"), state.blobs_with("miss")
        rows.append(
            (
                str(state.reference),
                ",".join(state.platforms) or "-",
                str(len(blobs)),
                human_size(state.total_bytes),
                _count_and_size(hits) if said else "?",
                _count_and_size(misses) if said else "?",
                "ok" if state.phase == "done" else "FAILED",
            )
        )
    headers = ("IMAGE", "PLATFORMS", "BLOBS", "SIZE", "CACHED BEFORE", "FETCHED NOW", "RESULT")
    lines = [table(headers, rows, right=[2, 3, 4, 5])]  # numbers right
    for state in states:
        if state.phase == "failed":
            lines.append(f"FAILED {state.reference}: {state.error}")
        elif state.tag_cache == "skip":
            lines.append(
                f"note: {state.reference}: the cache did not store the tag (its --skip-tags or "
                "--cache-manifests), so containerd asks the registry for it each time and an --offline "
                "cache cannot resolve it; its manifests and blobs are stored by digest"
            )
    return "\n".join(lines) + "\n"


def _count_and_size(blobs: Sequence[BlobState]) -> str:
    total = sum(blob.size for blob in blobs)
    return f"{len(blobs)} ({human_size(total)})"


def totals_line(states: Sequence[ImageState]) -> str:
    failed = sum(1 for s in states if s.phase == "failed")
    total = sum(s.total_bytes for s in states)
    # A blob two images share was fetched once.
    fetched = sum({blob.digest: blob.size for s in states for blob in s.blobs_with("miss")}.values())
    words = f"{len(states)} image(s), {human_size(total)}; {human_size(fetched)} fetched into the cache now"
    return words + (f"; {failed} failed" if failed else "") + "\n"
