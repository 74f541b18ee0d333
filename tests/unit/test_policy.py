"""What may be stored: skip-tags, cache-manifests and private registries."""

import re

from regcache.cache.policy import Policy
from regcache.oci.reference import parse_manifest_ref

SHA = "sha256:" + "c" * 64


def ref(reference, registry="docker.io"):
    return parse_manifest_ref(registry, "library/alpine", reference)


def test_default_policy_skips_latest_only():
    policy = Policy(skip_tags=re.compile("latest"))
    assert policy.manifest_skip_reason(ref("latest")) == "skip-tags"
    assert policy.manifest_skip_reason(ref("latest-alpine")) == "skip-tags"
    assert policy.manifest_skip_reason(ref("3.20")) is None
    assert policy.manifest_skip_reason(ref(SHA)) is None


def test_cache_manifests_off_skips_everything():
    policy = Policy(cache_manifests=False)
    assert policy.manifest_skip_reason(ref("3.20")) == "cache-manifests=no"
    assert policy.manifest_skip_reason(ref(SHA)) == "cache-manifests=no"


def test_private_registries_skip_manifests_by_tag_and_by_digest():
    policy = Policy(private_registries=frozenset({"ghcr.io"}))
    assert policy.manifest_skip_reason(ref("1.0", "ghcr.io")) == "private-registry"
    assert policy.manifest_skip_reason(ref(SHA, "ghcr.io")) == "private-registry"
    assert policy.manifest_skip_reason(ref("1.0", "quay.io")) is None


def test_unverifiable_digests_are_never_stored():
    assert Policy().manifest_skip_reason(ref("sha512:" + "d" * 128)) == "unverifiable-digest"


def test_no_skip_pattern_stores_latest():
    assert Policy(skip_tags=None).manifest_skip_reason(ref("latest")) is None


def test_skip_repos_is_searched_in_registry_slash_repository():
    policy = Policy(skip_repos=re.compile(r"^ghcr\.io/org/|/nightly-"))
    assert policy.manifest_skip_reason(parse_manifest_ref("ghcr.io", "org/app", "1.0")) == "skip-repos"
    assert policy.manifest_skip_reason(parse_manifest_ref("ghcr.io", "org/app", SHA)) == "skip-repos"
    assert policy.manifest_skip_reason(parse_manifest_ref("quay.io", "team/nightly-build", "1")) == "skip-repos"
    assert policy.manifest_skip_reason(parse_manifest_ref("ghcr.io", "other/org/app", "1.0")) is None
    assert policy.repo_is_skipped("ghcr.io", "org/app") and not policy.repo_is_skipped("docker.io", "org/app")
    assert not Policy().repo_is_skipped("ghcr.io", "org/app")
