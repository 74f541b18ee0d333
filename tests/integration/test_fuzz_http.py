"""Hostile requests against a running regcache: random paths, queries, Range and Accept headers,
and random WWW-Authenticate challenges from the upstream. Never a 500, never a traceback, an
OCI error body for every error regcache answers, and no file outside the cache dir."""

from __future__ import annotations

import http.client
import json
import os
import urllib.parse
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fakes import FakeHandler, FakeUpstream, digest_of, serve
from tests.support import Regcache, stored_blob

REPO = "fuzz/app"
BLOB = os.urandom(100_000)
PASSWORD = "fuzz-secret-pw-51c2"
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

header_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=200)
segment = st.one_of(
    st.text(alphabet="abcz09._-~:@!$&'()*+,;=%", max_size=30),
    st.sampled_from(["..", ".", "%2e%2e", "%2F", "%00", "%ff", "etc", "passwd", "manifests", "blobs", "uploads"]),
    st.builds(lambda b: urllib.parse.quote(b, safe=""), st.binary(max_size=12)),
)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Regcache, FakeUpstream]]:
    fake = FakeUpstream()
    fake.routes[f"/v2/{REPO}/blobs/{digest_of(BLOB)}"] = serve(BLOB)
    creds = tmp_path_factory.mktemp("fuzz-creds") / "creds.yaml"
    creds.write_text(json.dumps({fake.ns: {"username": "fuzzer", "password": PASSWORD}}))
    creds.chmod(0o600)
    cache = Regcache([*fake.upstream_arg(), "-f", str(creds), "--max-fill-clients", "64"]).start()
    assert cache.blob(fake.ns, REPO, digest_of(BLOB)).body == BLOB
    stored_blob(cache.cache_dir, digest_of(BLOB))
    yield cache, fake
    cache.stop(grace=5)
    fake.close()


def send(cache: Regcache, method: str, target: str, headers: dict[str, str]) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", cache.port, timeout=30)
    try:
        conn.request(method, target, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    finally:
        conn.close()


def assert_sane(status: int, content_type: str, body: bytes, method: str) -> None:
    assert status < 500 or status in (502, 503), (status, body[:300])
    if status >= 400 and method == "GET":
        assert content_type.startswith("application/json"), (status, content_type, body[:300])
        errors = json.loads(body)["errors"]
        assert errors and all({"code", "message"} <= set(e) for e in errors)


@FUZZ
@given(
    method=st.sampled_from(["GET", "HEAD"]),
    segments=st.lists(segment, max_size=6),
    tail=st.sampled_from(
        [
            "",
            "/manifests/1.0",
            f"/blobs/{digest_of(BLOB)}",
            "/blobs/sha256:..",
            "/manifests/",
            "/tags/list",
            f"/referrers/{digest_of(BLOB)}",
            "/referrers/sha256:..",
        ]
    ),
    ns=st.one_of(st.none(), st.just("FAKE"), header_text, st.sampled_from(["127.0.0.1", "[::1]", "a" * 300, ""])),
    extra_query=st.lists(st.tuples(header_text, header_text), max_size=3),
)
def test_random_paths_and_queries(target, method, segments, tail, ns, extra_query):
    cache, fake = target
    path = "/v2/" + "/".join(segments) + tail
    query = [] if ns is None else [("ns", fake.ns if ns == "FAKE" else ns)]
    target_url = path + "?" + urllib.parse.urlencode(query + extra_query) if query or extra_query else path
    assert_sane(*send(cache, method, target_url, {}), method)


@FUZZ
@given(
    range_header=st.one_of(header_text, st.from_regex(r"bytes=[0-9]{0,12}-[0-9]{0,12}", fullmatch=True)),
    accept=header_text,
)
def test_random_range_and_accept_headers(target, range_header, accept):
    cache, fake = target
    ns = urllib.parse.quote(fake.ns)
    for path in (f"/v2/{REPO}/blobs/{digest_of(BLOB)}", f"/v2/{REPO}/manifests/1.0"):
        status, content_type, body = send(cache, "GET", f"{path}?ns={ns}", {"Range": range_header, "Accept": accept})
        assert_sane(status, content_type, body, "GET")
        if status == 206:
            assert 0 < len(body) <= len(BLOB) and body in BLOB


@FUZZ
@given(challenge=st.one_of(header_text, st.builds(lambda p: f"Bearer {p}", header_text), st.just("")))
def test_random_www_authenticate_challenges_from_the_upstream(target, challenge):
    cache, fake = target

    def locked(h: FakeHandler) -> None:
        h.send_json(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"fuzz"}]}', {"WWW-Authenticate": challenge})

    fake.routes[f"/v2/{REPO}/manifests/locked"] = locked
    status, content_type, body = send(cache, "GET", f"/v2/{REPO}/manifests/locked?ns={fake.ns}", {})
    assert status in (401, 403, 502, 503), (status, body[:200])


def test_after_fuzzing_nothing_was_written_outside_the_cache_and_nothing_crashed(target):
    cache, _ = target
    log = cache.log()
    assert "Traceback" not in log and "status=500" not in log
    assert PASSWORD not in log
    assert sorted(p.name for p in cache.workdir.iterdir()) == ["cache", "regcache.log"]
    tops = {p.relative_to(cache.cache_dir).parts[0] for p in cache.cache_dir.rglob("*")}
    assert tops <= {"blobs", "manifests", "tags", "lists", "staging", "private"}, tops
