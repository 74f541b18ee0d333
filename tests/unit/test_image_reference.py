"""Image references as an operator types them, normalised as containerd does, and platforms."""

import pytest

from regcache.errors import BadRequest
from regcache.oci.platforms import Platform
from regcache.oci.reference import parse_image_reference

SHA = "sha256:" + "e" * 64


@pytest.mark.parametrize(
    "text, expected",
    [
        ("alpine", "docker.io/library/alpine:latest"),
        ("alpine:3.20", "docker.io/library/alpine:3.20"),
        ("bitnami/redis:7", "docker.io/bitnami/redis:7"),
        ("docker.io/alpine", "docker.io/library/alpine:latest"),
        ("index.docker.io/library/alpine:3", "docker.io/library/alpine:3"),
        ("ghcr.io/org/team/app:v1.2", "ghcr.io/org/team/app:v1.2"),
        ("localhost/app", "localhost/app:latest"),
        ("registry.lan:5000/app", "registry.lan:5000/app:latest"),
        ("127.0.0.1:5000/a/b:c", "127.0.0.1:5000/a/b:c"),
        (f"alpine@{SHA}", f"docker.io/library/alpine@{SHA}"),
        (f"alpine:3.20@{SHA}", f"docker.io/library/alpine@{SHA}"),
        ("Quay.IO/org/app", "quay.io/org/app:latest"),
    ],
)
def test_references_are_normalised_as_containerd_does(text, expected):
    assert str(parse_image_reference(text)) == expected


def test_a_reference_says_what_goes_in_the_url():
    assert parse_image_reference("alpine:3.20").reference == "3.20"
    assert parse_image_reference(f"alpine@{SHA}").reference == SHA


@pytest.mark.parametrize(
    "text, words",
    [
        ("", "empty"),
        ("Alpine", "lower-case"),
        ("alpine:", "invalid tag"),
        ("alpine:a/b", "invalid"),
        ("alpine@sha256:12", "sha256"),
        ("a b", "white space"),
        ("e" * 64, "64-hex"),
        ("ghcr.io/", "invalid repository name"),
        ("bad_host:x:y/app", "invalid"),
    ],
)
def test_bad_references_are_refused_with_the_reason(text, words):
    with pytest.raises(BadRequest) as info:
        parse_image_reference(text)
    assert words in info.value.message


@pytest.mark.parametrize(
    "text, expected",
    [
        ("linux/amd64", "linux/amd64"),
        ("linux/x86_64", "linux/amd64"),
        ("linux/amd64/v1", "linux/amd64"),
        ("linux/arm64/v8", "linux/arm64"),
        ("linux/aarch64", "linux/arm64"),
        ("linux/arm", "linux/arm/v7"),
        ("linux/arm/6", "linux/arm/v6"),
        ("arm64", "linux/arm64"),
        ("Linux/AMD64", "linux/amd64"),
    ],
)
def test_platforms_are_normalised(text, expected):
    assert str(Platform.parse(text)) == expected


@pytest.mark.parametrize("text", ["", "linux/", "amd46", "linux/amd64/v2/x"])
def test_bad_platforms_are_refused(text):
    with pytest.raises(BadRequest, match="invalid platform"):
        Platform.parse(text)


def test_an_index_entry_matches_the_platform_it_names():
    entry = {"digest": SHA, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}}
    assert Platform.of_descriptor(entry) == Platform.parse("linux/arm64")
    assert Platform.of_descriptor({"digest": SHA}) is None
    assert Platform.parse("linux") == Platform.host()
