"""ns comes from clients: regcache must not become a way to reach loopback services or the cloud
metadata service. Refused requests get a 403 in the OCI format, and the target sees nothing."""

from __future__ import annotations

import json
import os

import pytest

from tests.fakes import FakeHandler, FakeUpstream, digest_of, serve
from tests.support import Response

REPO = "ssrf/app"


@pytest.fixture
def target():
    """A loopback service that must never be reached: it records every request."""
    upstream = FakeUpstream()
    yield upstream
    upstream.close()


def assert_denied(resp: Response, *words: str) -> None:
    assert resp.status == 403, resp.body
    [entry] = json.loads(resp.body)["errors"]
    assert entry["code"] == "DENIED"
    for word in words:
        assert word in entry["message"]


@pytest.mark.parametrize("ns", ["{loopback}", "169.254.169.254", "[::1]:{port}", "0.0.0.0:{port}", "10.0.0.5:5000"])
def test_an_ip_address_as_ns_is_refused_unless_an_upstream_entry_names_it(make_regcache, fake, target, ns):
    ns = ns.format(loopback=target.ns, port=target.port)
    cache = make_regcache(*fake.upstream_arg())
    assert_denied(cache.manifest(ns, REPO, "1.0"), "IP address", "--upstream")
    assert_denied(cache.blob(ns, REPO, digest_of(b"x")), "IP address")
    assert target.seen == []


def test_a_name_resolving_to_loopback_is_refused_unless_an_upstream_entry_names_it(make_regcache, target):
    data = os.urandom(1024)
    target.routes[f"/v2/{REPO}/blobs/{digest_of(data)}"] = serve(data)
    ns = f"localhost:{target.port}"
    refused = make_regcache()
    assert_denied(refused.blob(ns, REPO, digest_of(data)), "localhost", "loopback")
    assert target.seen == []
    # The operator names it: then it is theirs to reach.
    named = make_regcache("--upstream", f"{ns}=http://{ns}")
    resp = named.blob(ns, REPO, digest_of(data))
    assert resp.status == 200 and resp.body == data


def test_allow_registry_limits_the_registries_served(make_regcache, fake):
    data = os.urandom(1024)
    fake.routes[f"/v2/{REPO}/blobs/{digest_of(data)}"] = serve(data)
    only_hub = make_regcache(*fake.upstream_arg(), "--allow-registry", "docker.io")
    assert_denied(only_hub.blob(fake.ns, REPO, digest_of(data)), "--allow-registry")
    assert fake.seen == []
    # A glob without a port matches every port.
    loopback = make_regcache(*fake.upstream_arg(), "--allow-registry", "docker.io", "--allow-registry", "127.0.0.*")
    assert loopback.blob(fake.ns, REPO, digest_of(data)).body == data
    assert_denied(loopback.manifest("ghcr.io", REPO, "1.0"), "ghcr.io")


@pytest.mark.parametrize(
    "location",
    [
        "http://localhost:{port}/v2/secret",
        "http://[::1]:{port}/v2/secret",
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    ],
)
def test_a_redirect_to_an_internal_address_is_not_followed(make_regcache, fake, target, location):
    location = location.format(port=target.port)
    digest = digest_of(b"blob behind a redirect")

    def redirect(h: FakeHandler) -> None:
        h.send_json(307, b"", {"Location": location})

    fake.routes[f"/v2/{REPO}/blobs/{digest}"] = redirect
    fake.routes[f"/v2/{REPO}/manifests/1.0"] = redirect
    cache = make_regcache(*fake.upstream_arg())
    assert_denied(cache.blob(fake.ns, REPO, digest), "loopback, link-local")
    assert_denied(cache.manifest(fake.ns, REPO, "1.0"))
    assert target.seen == []
    assert cache.stored_files("blobs") == []


def test_a_token_realm_on_an_internal_address_is_not_asked(make_regcache, fake, target, scratch):
    creds = scratch / "creds.yaml"
    creds.write_text(json.dumps({fake.ns: {"username": "u", "password": "p-7f3a"}}))
    creds.chmod(0o600)
    challenge = f'Bearer realm="http://localhost:{target.port}/token",service="fake"'
    fake.routes[f"/v2/{REPO}/manifests/1.0"] = lambda h: h.send_json(
        401, b'{"errors":[{"code":"UNAUTHORIZED","message":"auth"}]}', {"WWW-Authenticate": challenge}
    )
    cache = make_regcache(*fake.upstream_arg(), "-f", str(creds))
    resp = cache.manifest(fake.ns, REPO, "1.0")
    # Our credentials are not sent there; the client gets the registry's 401 and can try itself.
    assert resp.status == 401 and resp.header("WWW-Authenticate") == challenge
    assert target.seen == []
    assert "token realm http://localhost" in cache.log() and "refused" in cache.log()
