"""Challenge parsing and the token flow, with a recording token fetcher in place of a realm."""

import asyncio
import base64
import json

import pytest

from regcache.credentials import Credentials, CredentialStore
from regcache.upstream.auth import Authenticator, TokenAnswer, parse_www_authenticate

HUB = 'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"'


def test_parses_docker_hub_bearer_challenge():
    [challenge] = parse_www_authenticate(HUB)
    assert challenge.scheme == "bearer"
    assert challenge.params == {
        "realm": "https://auth.docker.io/token",
        "service": "registry.docker.io",
        "scope": "repository:library/alpine:pull",
    }


def test_parses_several_challenges_and_escapes():
    challenges = parse_www_authenticate(r'Bearer realm="a\"b", error=invalid_token, Basic realm="r"')
    assert [c.scheme for c in challenges] == ["bearer", "basic"]
    assert challenges[0].params == {"realm": 'a"b', "error": "invalid_token"}


@pytest.mark.parametrize("garbage", ["", ",,,", '="', "Bearer realm", "Bearer ===", "\x00\xff", "Basic " + "a" * 10000])
def test_garbage_never_raises(garbage):
    parse_www_authenticate(garbage)


class Realm:
    """Records token requests; answers like distribution's token server."""

    def __init__(self, status=200, token="t0k3n", expires_in=300):
        self.requests = []
        self.status, self.token, self.expires_in = status, token, expires_in

    async def __call__(self, request):
        self.requests.append(request)
        await asyncio.sleep(0.01)
        return TokenAnswer(self.status, json.dumps({"token": self.token, "expires_in": self.expires_in}).encode())


CREDS = Credentials("alice", "wonderland")


def authenticator(realm, clock=None):
    if clock is None:
        return Authenticator(CredentialStore({"docker.io": CREDS}), realm)
    return Authenticator(CredentialStore({"docker.io": CREDS}), realm, clock)


def test_bearer_token_is_fetched_with_basic_creds_and_scope():
    realm = Realm()
    auth = authenticator(realm)
    header = asyncio.run(auth.answer("docker.io", "library/alpine", CREDS, HUB))
    assert header == "Bearer t0k3n"
    [request] = realm.requests
    assert request.url == (
        "https://auth.docker.io/token?service=registry.docker.io&scope=repository%3Alibrary%2Falpine%3Apull"
    )
    assert base64.b64decode(request.authorization.split()[1]) == b"alice:wonderland"
    assert auth.cached_header("docker.io", "library/alpine") == "Bearer t0k3n"
    assert auth.cached_header("docker.io", "library/other") is None


def test_concurrent_challenges_share_one_token_fetch():
    realm = Realm()
    auth = authenticator(realm)

    async def many():
        return await asyncio.gather(*(auth.answer("docker.io", "library/alpine", CREDS, HUB) for _ in range(10)))

    assert set(asyncio.run(many())) == {"Bearer t0k3n"}
    assert len(realm.requests) == 1


def test_refused_credentials_give_no_header():
    auth = authenticator(Realm(status=401))
    assert asyncio.run(auth.answer("docker.io", "library/alpine", CREDS, HUB)) is None
    assert auth.cached_header("docker.io", "library/alpine") is None


def test_basic_challenge_answers_with_basic():
    auth = authenticator(Realm())
    header = asyncio.run(auth.answer("r.test", "app", CREDS, 'Basic realm="Registry"'))
    assert base64.b64decode(header.split()[1]) == b"alice:wonderland"


def test_expired_tokens_are_not_reused():
    now = [1000.0]
    auth = authenticator(Realm(expires_in=60), clock=lambda: now[0])
    asyncio.run(auth.answer("docker.io", "library/alpine", CREDS, HUB))
    now[0] += 45
    assert auth.cached_header("docker.io", "library/alpine") == "Bearer t0k3n"
    now[0] += 10  # within the expiry margin
    assert auth.cached_header("docker.io", "library/alpine") is None


def test_realm_that_is_not_http_is_ignored():
    realm = Realm()
    auth = authenticator(realm)
    assert asyncio.run(auth.answer("docker.io", "x", CREDS, 'Bearer realm="file:///etc/passwd"')) is None
    assert realm.requests == []


def test_the_header_cache_is_bounded(monkeypatch):
    import regcache.upstream.auth as auth_module

    monkeypatch.setattr(auth_module, "MAX_CACHED_HEADERS", 3)
    auth = authenticator(Realm())

    async def many():
        for i in range(5):
            await auth.answer("r.test", f"repo{i}", CREDS, 'Basic realm="r"')

    asyncio.run(many())
    assert [auth.cached_header("r.test", f"repo{i}") is not None for i in range(5)] == [False, False, True, True, True]


def test_a_request_that_raced_a_token_fetch_reuses_the_new_token():
    realm = Realm()
    auth = authenticator(realm)
    first = asyncio.run(auth.answer("docker.io", "library/alpine", CREDS, HUB))
    # A request sent before that token existed comes back 401 without Authorization.
    again = asyncio.run(auth.answer("docker.io", "library/alpine", CREDS, HUB, rejected=None))
    assert again == first and len(realm.requests) == 1
    # A request refused with that very token gets a new one.
    realm.token = "n3w"
    assert asyncio.run(auth.answer("docker.io", "library/alpine", CREDS, HUB, rejected=first)) == "Bearer n3w"
    assert len(realm.requests) == 2
