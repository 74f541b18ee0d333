"""Tag lists and referrers at the edge: what is passed on, what is refused, where a Link points."""

from __future__ import annotations

import pytest

from regcache.errors import BadRequest
from regcache.oci.listings import parse_referrers_ref, parse_tags_ref
from regcache.storage.base import list_key
from regcache.web.lists import cache_link

DIGEST = "sha256:" + "ab" * 32
CACHE = "http://cache.lan:3000"


def test_a_relative_link_stays_relative_and_gets_the_clients_ns():
    link = '</v2/app/tags/list?last=1.1&n=2>; rel="next"'
    moved = cache_link(link, "/v2/app/tags/list", "registry.lan:5000", CACHE)
    assert moved == '</v2/app/tags/list?last=1.1&n=2&ns=registry.lan:5000>; rel="next"'


def test_an_absolute_link_points_at_the_cache_and_a_registrys_own_ns_is_replaced():
    link = '<https://registry.lan/v2/app/tags/list?n=2&last=b&ns=elsewhere.io>; rel="next"'
    moved = cache_link(link, "/v2/app/tags/list", "registry.lan", CACHE)
    assert moved == '<http://cache.lan:3000/v2/app/tags/list?n=2&last=b&ns=registry.lan>; rel="next"'


def test_a_link_keeps_the_path_the_client_asked_for_and_no_ns_when_it_sent_none():
    # In-path routing (`/v2/<registry>/<repo>/...`) and Docker's mirror send no ns.
    link = '</v2/library/alpine/tags/list?last=3.19&n=100>; rel="next"'
    moved = cache_link(link, "/v2/docker.io/library/alpine/tags/list", None, CACHE)
    assert moved == '</v2/docker.io/library/alpine/tags/list?last=3.19&n=100>; rel="next"'


def test_the_registrys_own_page_markers_survive_unchanged():
    link = '</v2/app/tags/list?n=50&next_page=gAAAAABl%2Fxyz%3D>; rel="next"'
    moved = cache_link(link, "/v2/app/tags/list", "quay.io", CACHE)
    assert moved == '</v2/app/tags/list?n=50&next_page=gAAAAABl%2Fxyz%3D&ns=quay.io>; rel="next"'


def test_tags_arguments_go_upstream_sorted_without_ns():
    ref = parse_tags_ref("registry.lan", "team/app", "ns=registry.lan&n=2&last=1.0")
    assert ref.path == "/v2/team/app/tags/list?last=1.0&n=2"
    same = parse_tags_ref("registry.lan", "team/app", "last=1.0&n=2")
    assert ref.name == same.name, "one page, kept once, whatever the argument order"
    assert parse_tags_ref("registry.lan", "team/app", "n=3").name != ref.name
    assert parse_tags_ref("registry.lan", "team/app", "").path == "/v2/team/app/tags/list"


@pytest.mark.parametrize("n", ["-1", "two", "1e3", "9999999999", ""])
def test_a_bad_page_size_is_a_400_naming_it(n):
    with pytest.raises(BadRequest) as caught:
        parse_tags_ref("registry.lan", "app", f"n={n}")
    assert caught.value.status == 400 and caught.value.code == "PAGINATION_NUMBER_INVALID"
    assert "invalid n" in caught.value.message


def test_referrers_pass_the_artifact_type_on_and_keep_each_filter_apart():
    ref = parse_referrers_ref("registry.lan", "app", DIGEST, "artifactType=application%2Fvnd.example%2Bjson&ns=x")
    assert ref.path == f"/v2/app/referrers/{DIGEST}?artifactType=application%2Fvnd.example%2Bjson"
    unfiltered = parse_referrers_ref("registry.lan", "app", DIGEST, "")
    assert unfiltered.name != ref.name
    assert list_key(ref.registry, ref.repo, ref.kind, ref.name).startswith("lists/registry.lan/app/_referrers/")


@pytest.mark.parametrize("digest", ["sha256:xyz", "latest", "sha256:" + "AB" * 32, "sha256-" + "ab" * 32])
def test_a_bad_referrers_digest_is_a_400_naming_it(digest):
    with pytest.raises(BadRequest) as caught:
        parse_referrers_ref("registry.lan", "app", digest, "")
    assert caught.value.status == 400 and caught.value.code == "DIGEST_INVALID"
    assert digest in caught.value.message and "referrers" in caught.value.message


def test_a_bad_repository_name_is_refused_before_anything_goes_upstream():
    with pytest.raises(BadRequest):
        parse_tags_ref("registry.lan", "Bad/Name", "")
