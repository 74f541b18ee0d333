"""The request grammar: what regcache accepts as a registry, repository, tag and digest."""

import pytest

from regcache.errors import BadRequest
from regcache.oci.digest import Digest
from regcache.oci.reference import parse_blob_ref, parse_manifest_ref, parse_registry, parse_repo

SHA = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    "name",
    ["library/alpine", "alpine", "my-org/sub.team/app_1", "a/b/c/d", "x__y", "a-----b", "0/1"],
)
def test_valid_repository_names(name):
    assert parse_repo(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "Library/alpine",
        "a//b",
        "/a",
        "a/",
        "a/../b",
        "..",
        "a..b",
        "-a",
        "a-",
        "a_",
        "_a",
        "a b",
        "a%2fb",
        "x" * 256,
    ],
)
def test_invalid_repository_names_are_400(name):
    with pytest.raises(BadRequest) as info:
        parse_repo(name)
    assert info.value.status == 400
    assert info.value.code == "NAME_INVALID"


@pytest.mark.parametrize(
    "ns, expected",
    [
        ("docker.io", "docker.io"),
        ("GHCR.io", "ghcr.io"),
        ("127.0.0.1:5000", "127.0.0.1:5000"),
        ("registry.example.test:443", "registry.example.test:443"),
        ("[::1]:5000", "[::1]:5000"),
        ("localhost", "localhost"),
    ],
)
def test_registry_from_ns(ns, expected):
    assert parse_registry(ns) == expected


@pytest.mark.parametrize("ns", ["", "a/b", "http://x", "x:y", "-bad.com", "a b", "x:123456", "../etc", "a_b.com"])
def test_bad_ns_is_400(ns):
    with pytest.raises(BadRequest):
        parse_registry(ns)


def test_manifest_by_tag_and_by_digest():
    by_tag = parse_manifest_ref("docker.io", "library/alpine", "3.20")
    assert by_tag.tag == "3.20" and by_tag.digest is None and by_tag.reference == "3.20"
    by_digest = parse_manifest_ref("docker.io", "library/alpine", SHA)
    assert by_digest.digest == Digest("sha256", "a" * 64) and by_digest.tag is None
    assert by_digest.reference == SHA


@pytest.mark.parametrize("tag", [".hidden", "-x", "a" * 129, "a/b", "a+b", ""])
def test_bad_tags_are_400(tag):
    with pytest.raises(BadRequest):
        parse_manifest_ref("docker.io", "library/alpine", tag)


@pytest.mark.parametrize(
    "digest", ["sha256:" + "A" * 64, "sha256:" + "a" * 63, "sha256:", "sha256" + "a" * 64, "md5:!!", ":abc"]
)
def test_bad_digests_are_400(digest):
    with pytest.raises(BadRequest) as info:
        parse_blob_ref("docker.io", "library/alpine", digest)
    assert info.value.code == "DIGEST_INVALID"


def test_other_algorithms_parse_but_are_not_verifiable():
    ref = parse_blob_ref("docker.io", "library/alpine", "sha512:" + "b" * 128)
    assert ref.digest.algorithm == "sha512"
    assert not ref.digest.verifiable
    assert parse_blob_ref("docker.io", "library/alpine", SHA).digest.verifiable


def test_digest_of_bytes():
    assert str(Digest.of(b"")) == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
