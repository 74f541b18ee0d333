"""Referrers through the cache (README "Tag lists and referrers").

docker-registry 2.8 has no referrers API: its 404 must reach the client unchanged, and the
`sha256-<hex>` tag schema clients then fall back to must work as any tag does. The API itself
(OCI distribution spec 1.1), its `artifactType` filter and outages on it come from the
in-process fake.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.fakes import FakeHandler, drop_before_headers
from tests.integration.test_lists import error, kept_lists, stale_count
from tests.peers.images import Image, build_image, make_layer, push
from tests.peers.registry import Registry
from tests.support import request

REPO = "signed/app"
INDEX = "application/vnd.oci.image.index.v1+json"
SIGNATURE_TYPE = "application/vnd.dev.cosign.artifact.sig.v1+json"
TTL = 1.0


@dataclass
class Signed:
    registry: Registry
    image: Image  # REPO:1.0
    signature: Image  # REPO:sha256-<hex of image's manifest>, as cosign tags a signature

    @property
    def ns(self) -> str:
        return self.registry.host

    @property
    def fallback_tag(self) -> str:
        return self.image.manifest_digest.replace(":", "-")


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Signed]:
    layout = tmp_path_factory.mktemp("signed-layout")
    layers = [make_layer({"etc/signed.txt": b"signed\n"})]
    image = build_image(layout, layers, "1.0")
    signature = build_image(layout, layers, "sig", labels={"signature": "yes"})
    registry = Registry(tmp_path_factory.mktemp("signed-registry")).start()
    try:
        signed = Signed(registry, image, signature)
        push(image, f"{registry.host}/{REPO}:1.0")
        push(signature, f"{registry.host}/{REPO}:{signed.fallback_tag}")
        yield signed
    finally:
        registry.close()


# --- referrers against distribution: no API, so the tag schema ---------------------------------------
def test_a_registry_without_the_referrers_api_gets_its_404_through_and_the_tag_schema_works(make_regcache, signed):
    cache = make_regcache("--upstream", f"{signed.ns}={signed.registry.url}")
    path = f"/v2/{REPO}/referrers/{signed.image.manifest_digest}"
    direct = request(signed.registry.url + path)
    assert direct.status == 404, "docker-registry 2.8 has no referrers API"
    through = cache.get(path, signed.ns)
    assert (through.status, through.body) == (404, direct.body)
    assert through.header("Content-Type") == direct.header("Content-Type")
    assert kept_lists(cache) == []

    # The fallback: the signature is the manifest tagged sha256-<hex>, served and cached as any tag.
    tag = signed.fallback_tag
    first = cache.manifest(signed.ns, REPO, tag)
    assert first.status == 200 and first.body == signed.signature.manifest_bytes
    assert first.header("Docker-Content-Digest") == signed.signature.manifest_digest
    assert (cache.cache_dir / "tags" / signed.ns / REPO / f"{tag}.json").exists()
    gets = signed.registry.manifest_get_count(tag)
    again = cache.manifest(signed.ns, REPO, tag)
    assert again.body == signed.signature.manifest_bytes
    assert signed.registry.manifest_get_count(tag) == gets, "served from the cache"


@pytest.mark.parametrize("digest", ["sha256:not-hex", "latest", "sha256-" + "0" * 64])
def test_a_bad_referrers_digest_is_a_400_naming_it(make_regcache, signed, digest):
    cache = make_regcache("--upstream", f"{signed.ns}={signed.registry.url}")
    answer = cache.get(f"/v2/{REPO}/referrers/{digest}", signed.ns)
    assert answer.status == 400
    [entry] = json.loads(answer.body)["errors"]
    assert entry["code"] == "DIGEST_INVALID" and digest in entry["message"] and "referrers" in entry["message"]


# --- referrers from a registry that has the API (the fake) -------------------------------------------
SUBJECT = "sha256:" + "5e" * 32
REFERRERS_PATH = f"/v2/{REPO}/referrers/{SUBJECT}"


def referrers_index(*artifact_types: str) -> bytes:
    manifests = [
        {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": "sha256:" + f"{i:02x}" * 32,
            "size": 100 + i,
            "artifactType": kind,
        }
        for i, kind in enumerate(artifact_types)
    ]
    return json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": manifests}).encode()


class Referrers:
    """The fake's referrers API: filters by artifactType as a 1.1 registry does, and records queries."""

    def __init__(self, *artifact_types: str) -> None:
        self.artifact_types = artifact_types
        self.queries: list[str] = []
        self.failure = None

    def __call__(self, h: FakeHandler) -> None:
        query = urllib.parse.urlsplit(h.path).query
        self.queries.append(query)
        if self.failure is not None:
            self.failure(h)
            return
        wanted = urllib.parse.parse_qs(query).get("artifactType")
        headers = {}
        kinds = self.artifact_types
        if wanted:
            kinds = tuple(k for k in kinds if k in wanted)
            headers["OCI-Filters-Applied"] = "artifactType"
        body = referrers_index(*kinds)
        h.send_response(200)
        h.send_header("Content-Type", INDEX)
        h.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            h.send_header(name, value)
        h.end_headers()
        h.wfile.write(body)


@pytest.fixture
def referrers_cache(make_regcache, fake):
    return make_regcache(*fake.upstream_arg(), "--tag-ttl", f"{TTL}s", "--upstream-idle-timeout", "1")


def test_referrers_are_passed_through_with_the_filter_and_kept_for_the_tag_ttl(referrers_cache, fake):
    api = Referrers(SIGNATURE_TYPE, "application/spdx+json")
    fake.routes[REFERRERS_PATH] = api
    everything = referrers_cache.get(REFERRERS_PATH, fake.ns)
    assert everything.status == 200 and everything.header("Content-Type") == INDEX
    assert everything.body == referrers_index(SIGNATURE_TYPE, "application/spdx+json")
    assert everything.header("OCI-Filters-Applied") is None

    filtered_path = f"{REFERRERS_PATH}?artifactType={urllib.parse.quote(SIGNATURE_TYPE, safe='')}"
    filtered = request(f"{referrers_cache.url}{filtered_path}&ns={fake.ns}")
    assert filtered.status == 200 and filtered.body == referrers_index(SIGNATURE_TYPE)
    assert filtered.header("OCI-Filters-Applied") == "artifactType"
    assert api.queries == ["", f"artifactType={urllib.parse.quote(SIGNATURE_TYPE, safe='')}"]

    # Within the TTL both come from the cache, each with its own filter and header.
    again = request(f"{referrers_cache.url}{filtered_path}&ns={fake.ns}")
    assert again.body == filtered.body and again.header("OCI-Filters-Applied") == "artifactType"
    assert referrers_cache.get(REFERRERS_PATH, fake.ns).body == everything.body
    assert len(api.queries) == 2
    assert referrers_cache.cache_count("hit") == 2 and referrers_cache.cache_count("miss") == 2
    time.sleep(TTL + 0.2)
    api.artifact_types = (SIGNATURE_TYPE,)
    assert referrers_cache.get(REFERRERS_PATH, fake.ns).body == referrers_index(SIGNATURE_TYPE), "asked again"
    assert len(api.queries) == 3


def stalled(release: threading.Event):
    def behaviour(h: FakeHandler) -> None:
        release.wait(30)
        h.close_connection = True

    return behaviour


FAILURES = {
    "503": lambda release: error(503),
    "429": lambda release: error(429),
    "connection dropped": lambda release: drop_before_headers(),
    "no answer (idle timeout)": stalled,
}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_kept_referrers_are_served_while_the_registry_cannot_answer(referrers_cache, fake, failure):
    api = Referrers(SIGNATURE_TYPE)
    fake.routes[REFERRERS_PATH] = api
    first = referrers_cache.get(REFERRERS_PATH, fake.ns)
    assert first.status == 200
    release = threading.Event()
    api.failure = FAILURES[failure](release)
    time.sleep(TTL + 0.2)
    try:
        stale = referrers_cache.get(REFERRERS_PATH, fake.ns)
    finally:
        release.set()
    assert stale.status == 200 and stale.body == first.body and stale.header("Content-Type") == INDEX
    assert stale_count(referrers_cache, fake.ns, "referrers") == 1
    # Never fetched: the failure reaches the client as it would for a manifest (503 or 502).
    other = f"/v2/{REPO}/referrers/sha256:{'77' * 32}"
    fake.routes[other] = api
    assert referrers_cache.get(other, fake.ns).status in (502, 503)


def test_referrers_refusals_pass_through_and_replace_nothing(referrers_cache, fake):
    api = Referrers(SIGNATURE_TYPE)
    fake.routes[REFERRERS_PATH] = api
    assert referrers_cache.get(REFERRERS_PATH, fake.ns).status == 200
    api.failure = error(404)
    time.sleep(TTL + 0.2)
    gone = referrers_cache.get(REFERRERS_PATH, fake.ns)
    assert gone.status == 404 and b"upstream says no" in gone.body
    assert stale_count(referrers_cache, fake.ns, "referrers") == 0
