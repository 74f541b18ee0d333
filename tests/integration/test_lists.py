"""Tag lists through the cache (README "Tag lists and referrers"); referrers: test_referrers.py.

Against a real distribution registry (docker-registry 2.8): the list and the client's arguments
passed on, the last good answer served while the registry is down, 401s (htpasswd and token)
passed through and answered by the client or the creds file, private registries never kept.
docker-registry 2.8 does not page tag lists, so pages and their `Link` come from the in-process
fake, which pages as distribution 3 does.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fakes import FakeHandler, drop_before_headers
from tests.integration.test_s3 import bucket_keys, s3_env
from tests.peers.images import Image, build_image, make_layer, push
from tests.peers.net import free_port
from tests.peers.registry import Registry
from tests.peers.seaweed import SeaweedS3
from tests.peers.tokenserver import TokenServer
from tests.support import Regcache, log_lines, request, wait_until

REPO = "lists/app"
TAGS = ["1.0", "1.1", "2.0", "edge"]
USER, PASSWORD = "dora", "lists-pw-6e1f0b2a"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass
class Listed:
    registry: Registry
    image: Image  # REPO at every tag of TAGS
    signature: Image  # REPO:sha256-<hex of image's manifest>, as cosign tags a signature

    @property
    def ns(self) -> str:
        return self.registry.host

    @property
    def fallback_tag(self) -> str:
        return self.image.manifest_digest.replace(":", "-")


@pytest.fixture(scope="module")
def listed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Listed]:
    layout = tmp_path_factory.mktemp("lists-layout")
    layers = [make_layer({"etc/lists.txt": b"listed\n"})]
    image = build_image(layout, layers, "1.0")
    signature = build_image(layout, layers, "sig", labels={"signature": "yes"})
    registry = Registry(tmp_path_factory.mktemp("lists-registry")).start()
    try:
        for tag in TAGS:
            push(image, f"{registry.host}/{REPO}:{tag}")
        listed = Listed(registry, image, signature)
        push(signature, f"{registry.host}/{REPO}:{listed.fallback_tag}")
        yield listed
    finally:
        registry.close()


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory, listed: Listed) -> Iterator[Registry]:
    registry = Registry(tmp_path_factory.mktemp("lists-locked"), htpasswd=(USER, PASSWORD)).start()
    try:
        push(listed.image, f"{registry.host}/{REPO}:1.0", creds=(USER, PASSWORD))
        yield registry
    finally:
        registry.close()


@pytest.fixture(scope="module")
def token_locked(tmp_path_factory: pytest.TempPathFactory, listed: Listed) -> Iterator[Registry]:
    server = TokenServer(tmp_path_factory.mktemp("lists-tokens"), user=USER, password=PASSWORD).start()
    registry = Registry(tmp_path_factory.mktemp("lists-token-registry"), token=server.auth())
    try:
        registry.start()
        push(listed.image, f"{registry.host}/{REPO}:1.0", creds=(USER, PASSWORD))
        yield registry
    finally:
        registry.close()
        server.stop()


def list_tags(cache: Regcache, ns: str | None, repo: str = REPO, query: str = "", **headers: str):
    arguments = [query] if query else []
    if ns is not None:
        arguments.append("ns=" + urllib.parse.quote(ns, safe=":"))
    return request(f"{cache.url}/v2/{repo}/tags/list?{'&'.join(arguments)}", headers=headers)


def next_link(link: str | None) -> str | None:
    if link is None:
        return None
    assert link.startswith("<") and '>; rel="next"' in link, link
    return link[1 : link.index(">")]


def stale_count(cache: Regcache, ns: str, kind: str) -> float:
    return cache.metrics().get(f'regcache_stale_served_total{{kind="{kind}",registry="{ns}"}}', 0.0)


def kept_lists(cache: Regcache) -> list[Path]:
    return cache.stored_files("lists")


def error(status: int):
    def behaviour(h: FakeHandler) -> None:
        h.send_json(status, b'{"errors":[{"code":"X","message":"upstream says no"}]}', {"Retry-After": "30"})

    return behaviour


# --- tags/list against distribution ----------------------------------------------------------------
def test_a_tag_list_comes_from_the_registry_with_the_clients_arguments(make_regcache, listed):
    cache = make_regcache("--upstream", f"{listed.ns}={listed.registry.url}")
    whole = list_tags(cache, listed.ns)
    assert whole.status == 200, whole.body
    assert whole.body == request(f"{listed.registry.url}/v2/{REPO}/tags/list").body
    assert json.loads(whole.body)["name"] == REPO
    assert sorted(json.loads(whole.body)["tags"]) == sorted([*TAGS, listed.fallback_tag])
    # docker-registry 2.8 does not page tag lists (distribution 3 does: the fake below), but the
    # arguments reach it as the client sent them, and the cache's own ns does not.
    page = list_tags(cache, listed.ns, query="n=2&last=1.1")
    assert page.status == 200
    [asked] = [e for e in listed.registry.requests() if e.path == f"/v2/{REPO}/tags/list" and e.query]
    assert urllib.parse.parse_qs(asked.query) == {"n": ["2"], "last": ["1.1"]}
    assert cache.metrics()['regcache_requests_total{kind="tags",method="GET",status="200"}'] == 2
    # A repository the registry does not know: its 404 (NAME_UNKNOWN), unchanged, nothing kept.
    unknown = list_tags(cache, listed.ns, "lists/nothing-here")
    direct_unknown = request(f"{listed.registry.url}/v2/lists/nothing-here/tags/list")
    assert (unknown.status, unknown.body) == (404, direct_unknown.body)
    assert b"NAME_UNKNOWN" in unknown.body and len(kept_lists(cache)) == 2


def paging_registry(tags: list[str]):
    """A tags/list that pages as distribution 3 does: sorted, `n` and `last`, a relative Link."""

    def behaviour(h: FakeHandler) -> None:
        path, _, query = h.path.partition("?")
        arguments = urllib.parse.parse_qs(query)
        after = [t for t in sorted(tags) if t > arguments.get("last", [""])[0]]
        n = int(arguments.get("n", [str(len(after))])[0])
        headers = {}
        if len(after) > n:
            headers["Link"] = f'<{path}?last={after[n - 1]}&n={n}>; rel="next"'
        h.send_json(200, json.dumps({"name": REPO, "tags": after[:n]}).encode(), headers)

    return behaviour


def test_tag_list_pages_are_followed_through_the_cache_and_kept_page_by_page(make_regcache, fake):
    cache = make_regcache(*fake.upstream_arg(), "--upstream-idle-timeout", "1")
    tags = [f"v{i}" for i in range(7)]
    fake.routes[f"/v2/{REPO}/tags/list"] = paging_registry(tags)
    seen: list[str] = []
    links: list[str] = []
    page = list_tags(cache, fake.ns, query="n=3")
    while True:
        assert page.status == 200, page.body
        seen += json.loads(page.body)["tags"]
        target = next_link(page.header("Link"))
        if target is None:
            break
        links.append(target)
        page = request(cache.url + target)
    assert seen == tags
    # Relative as the registry wrote them, on the cache's own path, with the client's ns.
    assert links == [
        f"/v2/{REPO}/tags/list?last=v2&n=3&ns={fake.ns}",
        f"/v2/{REPO}/tags/list?last=v5&n=3&ns={fake.ns}",
    ]
    asked = [s for s in fake.seen if s.path == f"/v2/{REPO}/tags/list"]
    assert len(asked) == 3 and len(kept_lists(cache)) == 3, "each page is kept on its own"
    # The registry goes away: every page still comes, and still leads to the next.
    fake.routes[f"/v2/{REPO}/tags/list"] = drop_before_headers()
    again = list_tags(cache, fake.ns, query="n=3")
    assert json.loads(again.body)["tags"] == tags[:3]
    stale_next = next_link(again.header("Link"))
    assert stale_next == links[0] and request(cache.url + stale_next).status == 200
    assert stale_count(cache, fake.ns, "tags") == 2


def test_a_tag_list_is_asked_for_every_time_so_a_new_tag_shows_at_once(make_regcache, listed):
    cache = make_regcache("--upstream", f"{listed.ns}={listed.registry.url}", "--tag-ttl", "1h")
    repo = "lists/growing"
    push(listed.image, f"{listed.ns}/{repo}:a")
    assert json.loads(list_tags(cache, listed.ns, repo).body)["tags"] == ["a"]
    push(listed.image, f"{listed.ns}/{repo}:b")
    assert sorted(json.loads(list_tags(cache, listed.ns, repo).body)["tags"]) == ["a", "b"]


def test_the_last_good_page_is_served_while_the_registry_is_down(make_regcache, listed):
    cache = make_regcache("--upstream", f"{listed.ns}={listed.registry.url}", "--upstream-idle-timeout", "2")
    first = list_tags(cache, listed.ns, query="n=2")
    assert first.status == 200 and first.header("X-Regcache-Cache") == "miss"
    assert len(kept_lists(cache)) == 1
    listed.registry.stop()
    try:
        stale = list_tags(cache, listed.ns, query="n=2")
        assert stale.status == 200 and stale.body == first.body
        assert stale.header("X-Regcache-Cache") == "hit"
        assert stale.header("Link") == first.header("Link"), "the kept page still leads on through the cache"
        assert stale_count(cache, listed.ns, "tags") == 1
        assert wait_until(
            lambda: log_lines(
                cache.log(), r"WARNING .*tags/list of .*/lists/app\?n=2: registry .*serving the answer kept"
            )
        )
        # A page never fetched needs the registry: 502 sends the client to it.
        assert list_tags(cache, listed.ns, query="n=3").status == 502
    finally:
        listed.registry.start()
    assert list_tags(cache, listed.ns, query="n=2").status == 200
    assert stale_count(cache, listed.ns, "tags") == 1


def test_an_offline_cache_serves_the_kept_list_and_a_404_for_one_never_kept(make_regcache, listed):
    first = make_regcache("--upstream", f"{listed.ns}={listed.registry.url}")
    kept = list_tags(first, listed.ns)
    assert kept.status == 200
    first.stop()
    # Air-gapped: the same cache dir, no registry contacted (the registry is still up, so a
    # request that reached it would answer).
    offline = make_regcache("--upstream", f"{listed.ns}={listed.registry.url}", "--offline", cache_dir=first.cache_dir)
    asked_before = len(listed.registry.request_log())
    again = list_tags(offline, listed.ns)
    assert again.status == 200 and json.loads(again.body) == json.loads(kept.body)
    never = list_tags(offline, listed.ns, query="n=1")
    assert never.status == 404
    assert "offline" in json.loads(never.body)["errors"][0]["message"]
    assert len(listed.registry.request_log()) == asked_before, "an offline cache asked the registry"


def test_a_registry_that_wants_a_login_gets_its_401_through_and_the_clients_login_up(make_regcache, locked):
    cache = make_regcache("--upstream", f"{locked.host}={locked.url}")
    refused = list_tags(cache, locked.host)
    direct = request(f"{locked.url}/v2/{REPO}/tags/list")
    assert refused.status == 401 == direct.status
    assert refused.header("WWW-Authenticate") == direct.header("WWW-Authenticate")
    assert "Basic" in (refused.header("WWW-Authenticate") or "")
    assert refused.body == direct.body
    allowed = list_tags(cache, locked.host, Authorization=basic(USER, PASSWORD))
    assert allowed.status == 200 and json.loads(allowed.body)["tags"] == ["1.0"]
    assert list_tags(cache, locked.host).status == 401, "a list fetched with one client's login is not another's"
    assert cache.cache_count("skip") == 2


def test_a_token_registrys_challenge_reaches_the_client_which_logs_in_and_lists_through_the_cache(
    make_regcache, token_locked
):
    """What containerd and skopeo do: the 401's Bearer challenge, a token from its realm, again."""
    cache = make_regcache("--upstream", f"{token_locked.host}={token_locked.url}")
    refused = list_tags(cache, token_locked.host)
    assert refused.status == 401
    challenge = refused.header("WWW-Authenticate") or ""
    assert challenge == request(f"{token_locked.url}/v2/{REPO}/tags/list").header("WWW-Authenticate")
    params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    assert params["scope"] == f"repository:{REPO}:pull"
    query = urllib.parse.urlencode({"service": params["service"], "scope": params["scope"]})
    token = request(f"{params['realm']}?{query}", headers={"Authorization": basic(USER, PASSWORD)})
    assert token.status == 200
    bearer = "Bearer " + json.loads(token.body)["token"]
    listed = list_tags(cache, token_locked.host, Authorization=bearer)
    assert listed.status == 200 and json.loads(listed.body)["tags"] == ["1.0"]


def test_a_creds_file_answers_a_token_registry_for_the_client(make_regcache, token_locked, tmp_path):
    creds = tmp_path / "creds.yaml"
    creds.write_text(json.dumps({token_locked.host: {"username": USER, "password": PASSWORD}}))  # JSON is YAML
    cache = make_regcache("--upstream", f"{token_locked.host}={token_locked.url}", "-f", str(creds))
    answer = list_tags(cache, token_locked.host)
    assert answer.status == 200 and json.loads(answer.body)["tags"] == ["1.0"]


def test_the_creds_file_answers_the_registrys_login_for_a_tag_list(make_regcache, locked, tmp_path):
    creds = tmp_path / "creds.yaml"
    creds.write_text(json.dumps({locked.host: {"username": USER, "password": PASSWORD}}))  # JSON is YAML
    cache = make_regcache("--upstream", f"{locked.host}={locked.url}", "-f", str(creds))
    answer = list_tags(cache, locked.host)
    assert answer.status == 200 and json.loads(answer.body)["tags"] == ["1.0"]


def test_a_private_registrys_list_is_never_kept_so_never_served_to_another_client(make_regcache, locked):
    cache = make_regcache("--upstream", f"{locked.host}={locked.url}", "--private-registry", locked.host)
    assert list_tags(cache, locked.host, Authorization=basic(USER, PASSWORD)).status == 200
    assert kept_lists(cache) == []
    locked.stop()
    try:
        for headers in ({}, {"Authorization": basic(USER, PASSWORD)}):
            assert list_tags(cache, locked.host, **headers).status == 502
        assert stale_count(cache, locked.host, "tags") == 0
    finally:
        locked.start()


def test_a_bad_page_size_is_a_400_before_anything_goes_upstream(make_regcache, listed):
    cache = make_regcache("--upstream", f"{listed.ns}={listed.registry.url}")
    before = len(listed.registry.requests())
    answer = list_tags(cache, listed.ns, query="n=lots")
    assert answer.status == 400
    [entry] = json.loads(answer.body)["errors"]
    assert entry["code"] == "PAGINATION_NUMBER_INVALID" and "'lots'" in entry["message"]
    assert len(listed.registry.requests()) == before


def test_an_absolute_link_from_the_registry_points_at_the_cache(make_regcache, fake):
    cache = make_regcache(*fake.upstream_arg())

    def paged(h: FakeHandler) -> None:
        link = f'<{fake.url}/v2/{REPO}/tags/list?n=1&last=a>; rel="next"'
        h.send_json(200, json.dumps({"name": REPO, "tags": ["a"]}).encode(), {"Link": link})

    fake.routes[f"/v2/{REPO}/tags/list"] = paged
    answer = list_tags(cache, fake.ns, query="n=1")
    assert answer.status == 200
    assert answer.header("Link") == f'<{cache.url}/v2/{REPO}/tags/list?n=1&last=a&ns={fake.ns}>; rel="next"'


def test_a_rate_limited_tag_list_never_kept_is_a_503_that_sends_the_client_to_the_registry(make_regcache, fake):
    cache = make_regcache(*fake.upstream_arg())
    fake.routes[f"/v2/{REPO}/tags/list"] = error(429)
    answer = list_tags(cache, fake.ns)
    assert answer.status == 503 and answer.header("Retry-After") is None
    [entry] = json.loads(answer.body)["errors"]
    assert entry["code"] == "UNAVAILABLE" and entry["detail"]["upstream_status"] == 429


def test_a_200_that_is_not_a_list_is_passed_on_but_not_kept(make_regcache, fake):
    cache = make_regcache(*fake.upstream_arg())

    def captive_portal(h: FakeHandler) -> None:
        body = b"<html>please log in to the hotel wifi</html>"
        h.send_response(200)
        h.send_header("Content-Type", "text/html")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    fake.routes[f"/v2/{REPO}/tags/list"] = captive_portal
    assert list_tags(cache, fake.ns).status == 200
    assert kept_lists(cache) == []


def test_concurrent_requests_for_one_list_share_one_upstream_request_per_credential(make_regcache, fake):
    cache = make_regcache(*fake.upstream_arg())
    release = threading.Event()
    answered: list[str] = []

    def slow(h: FakeHandler) -> None:
        release.wait(10)
        answered.append(h.headers.get("Authorization", ""))
        h.send_json(200, json.dumps({"name": REPO, "tags": ["a"]}).encode())

    fake.routes[f"/v2/{REPO}/tags/list"] = slow
    logins = [{}] * 6 + [{"Authorization": basic("erin", "pw")}] * 2
    with ThreadPoolExecutor(len(logins)) as pool:
        futures = [pool.submit(list_tags, cache, fake.ns, REPO, "", **headers) for headers in logins]
        assert wait_until(lambda: len(fake.seen) >= 2)
        time.sleep(1.0)  # every client has asked by now
        release.set()
        answers = [f.result() for f in futures]
    assert all(a.status == 200 and json.loads(a.body)["tags"] == ["a"] for a in answers)
    assert sorted(answered) == ["", basic("erin", "pw")], "one request without a login, one with it"


def test_a_second_replica_serves_the_kept_list_from_s3_while_the_registry_is_unreachable(
    make_regcache, fake, tmp_path_factory
):
    fake.routes[f"/v2/{REPO}/tags/list"] = paging_registry(["a", "b", "c"])
    with SeaweedS3(tmp_path_factory.mktemp("lists-weed")) as s3:
        bucket = s3.bucket(f"regcache-{uuid.uuid4().hex[:12]}")
        first = make_regcache("-b", bucket, *fake.upstream_arg(), env=s3_env(s3))
        page = list_tags(first, fake.ns, query="n=2")
        assert page.status == 200
        assert wait_until(lambda: any(key.startswith("lists/") for key in bucket_keys(s3, bucket)))
        second = make_regcache("-b", bucket, "--upstream", f"{fake.ns}=http://127.0.0.1:{free_port()}", env=s3_env(s3))
        kept = list_tags(second, fake.ns, query="n=2")
        assert (kept.status, kept.body, kept.header("Link")) == (200, page.body, page.header("Link"))
        assert stale_count(second, fake.ns, "tags") == 1
