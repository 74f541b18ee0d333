"""The local tier's LRU bookkeeping: what is evicted first, and what never is."""

from regcache.storage.local_index import LocalIndex
from regcache.storage.multipart import MIN_PART_SIZE, part_size


def test_least_recently_used_go_first_and_just_enough_go():
    index = LocalIndex(limit=100)
    for key in ("a", "b", "c"):
        index.add(key, 40)
    index.touch("a")  # now b is the oldest
    assert index.victims() == ["b"]
    assert index.total == 80 and "b" not in index


def test_pinned_objects_are_never_evicted_even_over_the_limit():
    index = LocalIndex(limit=50)
    index.add("reading", 40)
    index.add("not-in-s3-yet", 40)
    index.pin("reading")
    index.pin("not-in-s3-yet")
    assert index.victims() == []
    index.unpin("reading")
    assert index.victims() == ["reading"]
    assert index.total == 40


def test_a_key_pinned_twice_stays_pinned_until_both_release_it():
    index = LocalIndex(limit=0)
    index.add("k", 10)
    index.pin("k")
    index.pin("k")
    index.unpin("k")
    assert index.victims() == []
    index.unpin("k")
    assert index.victims() == ["k"]


def test_replacing_a_key_counts_its_size_once(tmp_path):
    index = LocalIndex(limit=1000)
    index.add("k", 10)
    index.add("k", 30)
    assert index.total == 30 and len(index) == 1


def test_load_orders_by_access_time_and_skips_staging_and_markers(tmp_path):
    import os

    for name, atime in (("blobs/sha256/aa/old", 100), ("blobs/sha256/aa/new", 200)):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 10)
        os.utime(path, (atime, atime))
    for skipped in ("staging/partial", "uploads/marker"):
        (tmp_path / skipped).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / skipped).write_bytes(b"y" * 1000)
    index = LocalIndex(limit=10)
    index.load(tmp_path)
    assert index.total == 20
    assert index.victims() == ["blobs/sha256/aa/old"]


def test_parts_are_16_mib_until_the_part_count_limit_needs_more():
    assert part_size(100 * 2**20) == MIN_PART_SIZE
    assert part_size(100 * 2**30) == MIN_PART_SIZE
    big = 500 * 2**30
    assert part_size(big) > MIN_PART_SIZE and big / part_size(big) < 10_000
