"""--offline as the operator sets it, and what it changes: stored tags never go stale, skip-tags
no longer refuse a stored tag, and the client hears a 404 that says the cache is offline."""

import asyncio
import os
import re

import pytest

from regcache.cache.policy import Policy
from regcache.cli import build_parser
from regcache.config import Settings
from regcache.errors import Offline
from regcache.oci.reference import parse_manifest_ref
from regcache.upstream.client import UpstreamClient, UpstreamRequest
from regcache.web.errors import error_for


@pytest.fixture(autouse=True)
def no_regcache_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("REGCACHE_"):
            monkeypatch.delenv(key)


def settings(*argv):
    return Settings.from_namespace(build_parser().parse_args(list(argv)))


def test_offline_is_off_by_default_and_set_by_flag_environment_or_config_file(monkeypatch, tmp_path):
    assert settings().offline is False
    assert settings("--offline").offline is True
    config = tmp_path / "regcache.yaml"
    config.write_text("offline: true\n")
    assert settings("-c", str(config)).offline is True
    monkeypatch.setenv("REGCACHE_OFFLINE", "true")
    assert settings().offline is True


def test_offline_serves_stored_tags_whatever_their_age_and_skip_tags():
    offline = Policy.from_settings(Settings(offline=True, tag_ttl=0.0, skip_tags=re.compile("latest")))
    assert offline.tag_is_fresh(1000.0, 10**9)
    assert offline.tag_is_fresh(None, 1000.0), "a pointer without a time: nothing to revalidate with"
    assert offline.manifest_skip_reason(parse_manifest_ref("docker.io", "library/alpine", "latest")) is None
    online = Policy.from_settings(Settings(tag_ttl=0.0, skip_tags=re.compile("latest")))
    assert not online.tag_is_fresh(1000.0, 1000.0)
    assert online.manifest_skip_reason(parse_manifest_ref("docker.io", "library/alpine", "latest")) == "skip-tags"


@pytest.mark.parametrize(
    "path, code, shown",
    [
        ("/v2/library/alpine/manifests/3.20", "MANIFEST_UNKNOWN", "docker.io/library/alpine:3.20"),
        ("/v2/library/alpine/manifests/sha256:" + "a" * 64, "MANIFEST_UNKNOWN", "alpine@sha256:aaaa"),
        ("/v2/library/alpine/blobs/sha256:" + "b" * 64, "BLOB_UNKNOWN", "docker.io/library/alpine@sha256:bbbb"),
    ],
)
def test_the_offline_refusal_is_a_404_that_names_what_is_missing(path, code, shown):
    status, got_code, message = error_for(Offline("docker.io", path), 500)
    assert (status, got_code) == (404, code)
    assert shown in message and "offline" in message


def test_the_upstream_client_refuses_every_request_offline():
    async def ask() -> None:
        client = UpstreamClient(Settings(offline=True))
        try:
            request = UpstreamRequest("docker.io", "library/alpine", "GET", "/v2/library/alpine/manifests/3.20")
            with pytest.raises(Offline):
                await client.fetch(request)
            with pytest.raises(Offline):
                await client.open(request)
        finally:
            client.close()

    asyncio.run(ask())
