"""What `regcache prefetch` shows: progress redrawn on a terminal, plain lines in a log, the table."""

import io

from regcache.commands.prefetch.report import Progress, human_size, summary_table
from regcache.commands.prefetch.walk import BlobState, ImageState
from regcache.oci.reference import parse_image_reference

SHA = "sha256:" + "f" * 64


def image(name: str, phase: str, *blobs: BlobState) -> ImageState:
    state = ImageState(parse_image_reference(name), phase=phase, digest=SHA, platforms=["linux/amd64"])
    state.blobs = {blob.digest: blob for blob in blobs}
    return state


def test_sizes_read_as_people_write_them():
    assert [human_size(n) for n in (0, 1023, 1024, 5 << 20, 3 << 30)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "5.0 MiB",
        "3.0 GiB",
    ]


def test_a_terminal_gets_running_images_redrawn_and_finished_ones_once():
    out = io.StringIO()
    progress = Progress(out, live=True)
    layer = BlobState("sha256:" + "1" * 64, 4 << 20, received=1 << 20)
    running = image("alpine:3.20", "blobs", layer)
    progress.update([running])
    assert "alpine:3.20  linux/amd64  0/1 blobs  1.0 MiB / 4.0 MiB" in out.getvalue()
    layer.done, layer.cache, running.phase = True, "miss", "done"
    progress.update([running])
    progress.update([running])
    text = out.getvalue()
    assert text.count("done  linux/amd64  1 blobs  4.0 MiB  (0 cached before, 1 fetched now)") == 1
    assert "\x1b[1F" in text, "the running line was drawn over"


def test_a_log_gets_what_each_image_resolved_to_and_how_it_ended():
    out = io.StringIO()
    progress = Progress(out, live=False)
    failed = image("ghcr.io/org/app:1", "failed")
    failed.error = "404 MANIFEST_UNKNOWN: manifest unknown"
    walked = image("alpine:3.20", "blobs", BlobState("sha256:" + "2" * 64, 10))
    progress.update([failed, walked])
    progress.update([failed, walked])
    assert out.getvalue().splitlines() == [
        f"docker.io/library/alpine:3.20  {SHA}  linux/amd64: 1 blobs, 10 B",
        "ghcr.io/org/app:1  FAILED: 404 MANIFEST_UNKNOWN: manifest unknown",
    ]


def test_the_table_says_cached_or_fetched_only_when_the_cache_said_so():
    told = image("alpine:3.20", "done", BlobState("sha256:" + "3" * 64, 2048, cache="hit", done=True))
    untold = image("busybox", "done", BlobState("sha256:" + "4" * 64, 10, done=True))
    lines = summary_table([told, untold]).splitlines()
    assert lines[0].split() == ["IMAGE", "PLATFORMS", "BLOBS", "SIZE", "CACHED", "BEFORE", "FETCHED", "NOW", "RESULT"]
    assert lines[1].split() == [
        "docker.io/library/alpine:3.20",
        "linux/amd64",
        "1",
        "2.0",
        "KiB",
        "1",
        "(2.0",
        "KiB)",
        "0",
        "(0",
        "B)",
        "ok",
    ]
    assert lines[2].split()[-3:] == ["?", "?", "ok"]
