"""The in-memory manifest cache: bounded by bytes, least recently used out first."""

from regcache.cache.manifests import HotManifests, Manifest
from regcache.oci.digest import Digest


def manifest(body: bytes) -> Manifest:
    return Manifest(Digest.of(body), "application/vnd.oci.image.manifest.v1+json", body)


def test_least_recently_used_manifests_leave_first_when_over_the_byte_limit():
    hot = HotManifests(limit=10)
    a, b, c = manifest(b"aaaa"), manifest(b"bbbbbb"), manifest(b"cc")
    hot.put(a.digest, a)
    hot.put(b.digest, b)
    assert hot.get(a.digest) is a  # a is now the most recent
    hot.put(c.digest, c)  # 12 bytes: b, the least recent, goes
    assert hot.get(b.digest) is None
    assert hot.get(a.digest) is a and hot.get(c.digest) is c


def test_a_manifest_larger_than_the_whole_cache_is_not_kept():
    hot = HotManifests(limit=4)
    big = manifest(b"x" * 5)
    hot.put(big.digest, big)
    assert hot.get(big.digest) is None
