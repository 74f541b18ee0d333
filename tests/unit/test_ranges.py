"""Range requests: the one byte range containerd sends when it resumes, and the edge cases."""

import pytest

from regcache.cache.ranges import ByteRange, Unsatisfiable, honoured_range, parse_range


@pytest.mark.parametrize(
    "header, size, expected",
    [
        ("bytes=0-99", 1000, ByteRange(0, 100)),
        ("bytes=100-", 1000, ByteRange(100, 1000)),
        ("bytes=-10", 1000, ByteRange(990, 1000)),
        ("bytes=-5000", 1000, ByteRange(0, 1000)),
        ("bytes=990-5000", 1000, ByteRange(990, 1000)),
        ("bytes = 5 - 9", 1000, ByteRange(5, 10)),
        ("bytes=999-999", 1000, ByteRange(999, 1000)),
    ],
)
def test_single_ranges_resolve(header, size, expected):
    assert parse_range(header).resolve(size) == expected


def test_content_range_names_inclusive_bounds_and_size():
    assert ByteRange(100, 200).content_range(1000) == "bytes 100-199/1000"


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5000-6000", "bytes=-0"])
def test_unsatisfiable_ranges(header):
    with pytest.raises(Unsatisfiable):
        parse_range(header).resolve(1000)


@pytest.mark.parametrize(
    "header", [None, "", "bytes=", "bytes=-", "items=0-1", "bytes=0-1,5-6", "bytes=9-1", "bytes=a-b", "x" * 300]
)
def test_ranges_we_do_not_honour_mean_the_whole_body(header):
    assert parse_range(header) is None


ETAG = '"sha256:' + "a" * 64 + '"'


@pytest.mark.parametrize("header", ["bytes=0-99", "bytes=100-", "bytes=-10", "bytes=0-"])
def test_a_range_asked_again_upstream_is_the_same_range(header):
    spec = parse_range(header)
    assert parse_range(spec.header()) == spec


def test_only_bytes_0_to_the_end_is_the_whole_object():
    assert parse_range("bytes=0-").from_start
    assert not parse_range("bytes=0-99").from_start
    assert not parse_range("bytes=1-").from_start
    assert not parse_range("bytes=-10").from_start


def test_if_range_honours_the_range_only_for_the_objects_own_etag():
    assert honoured_range("bytes=10-", None, ETAG) == parse_range("bytes=10-")
    assert honoured_range("bytes=10-", f" {ETAG} ", ETAG) == parse_range("bytes=10-")
    for other in ['"sha256:0"', f"W/{ETAG}", "Wed, 02 Dec 2026 10:00:00 GMT", ""]:
        assert honoured_range("bytes=10-", other, ETAG) is None, other
    assert honoured_range(None, ETAG, ETAG) is None
