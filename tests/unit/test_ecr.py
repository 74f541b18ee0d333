"""ECR tokens: which registries are ECR, caching until shortly before expiry, one refresh for all
waiters, one log line per run of failures. A recording fake stands in for ECR's API and the clock
is injected; tests/integration/test_ecr.py runs the real API call against moto."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from regcache.credentials import Credentials, CredentialStore, EcrAuth, NoCredentials, load_creds_file
from regcache.errors import ConfigError
from regcache.upstream.auth import Authenticator, TokenAnswer
from regcache.upstream.ecr import (
    BACKOFF_FIRST,
    MIN_TOKEN_USE,
    REFRESH_MARGIN,
    EcrCredentials,
    EcrToken,
    EcrUnavailable,
    ecr_auth_for,
)

ECR_HOST = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
SOURCE = EcrAuth(region="eu-west-1", registry_id="123456789012")
START = 1_800_000_000.0
TWELVE_HOURS = 12 * 3600.0


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


class FakeEcr:
    """Answers GetAuthorizationToken with token-1, token-2, ... valid `lifetime` from now."""

    def __init__(self, clock: Clock, lifetime: float = TWELVE_HOURS) -> None:
        self.clock, self.lifetime = clock, lifetime
        self.calls: list[EcrAuth] = []
        self.down = False

    async def __call__(self, source: EcrAuth) -> EcrToken:
        self.calls.append(source)
        await asyncio.sleep(0.01)  # long enough for every waiter to queue up behind the call
        if self.down:
            raise EcrUnavailable("Could not connect to the endpoint URL")
        return EcrToken(Credentials("AWS", f"token-{len(self.calls)}"), self.clock() + self.lifetime)


def ask(ecr: EcrCredentials, n: int = 1) -> list[Credentials | None]:
    async def many() -> list[Credentials | None]:
        return list(await asyncio.gather(*(ecr.credentials(ECR_HOST, SOURCE) for _ in range(n))))

    return asyncio.run(many())


@pytest.mark.parametrize(
    "registry, endpoint_host, expected",
    [
        (ECR_HOST, ECR_HOST, SOURCE),
        ("210987654321.dkr.ecr.cn-north-1.amazonaws.com.cn", "x", EcrAuth("cn-north-1", "210987654321")),
        # named by --upstream, reached at an ECR endpoint
        ("ecr.lan", ECR_HOST, SOURCE),
        ("ghcr.io", "ghcr.io", None),
        ("123456789012.dkr.ecr.eu-west-1.amazonaws.com.evil.test", "x", None),
        ("12345.dkr.ecr.eu-west-1.amazonaws.com", "x", None),
        ("public.ecr.aws", "public.ecr.aws", None),
    ],
)
def test_ecr_registries_are_known_by_their_host_name(registry, endpoint_host, expected):
    assert ecr_auth_for(registry, endpoint_host, None) == expected


def test_a_creds_file_entry_completes_and_overrides_the_host_name():
    entry = EcrAuth(endpoint="http://127.0.0.1:4566")
    assert ecr_auth_for(ECR_HOST, ECR_HOST, entry) == EcrAuth("eu-west-1", "123456789012", "http://127.0.0.1:4566")
    assert ecr_auth_for("ecr.lan", "ecr.lan", entry) == entry
    assert ecr_auth_for(ECR_HOST, ECR_HOST, EcrAuth(region="us-east-1")).region == "us-east-1"


def test_many_requests_at_once_make_one_token_call():
    clock = Clock()
    api = FakeEcr(clock)
    got = ask(EcrCredentials(api, clock), 20)
    assert got == [Credentials("AWS", "token-1")] * 20
    assert len(api.calls) == 1 and api.calls[0] == SOURCE


def test_the_token_is_kept_until_shortly_before_it_expires():
    clock = Clock()
    api = FakeEcr(clock)
    ecr = EcrCredentials(api, clock)
    assert ask(ecr) == [Credentials("AWS", "token-1")]
    clock.now += TWELVE_HOURS - REFRESH_MARGIN - 1
    assert ask(ecr) == [Credentials("AWS", "token-1")] and len(api.calls) == 1
    clock.now += 2  # inside the margin: refreshed, once
    assert ask(ecr, 5) == [Credentials("AWS", "token-2")] * 5
    assert len(api.calls) == 2


def test_the_refresh_margin_is_configurable():
    clock = Clock()
    api = FakeEcr(clock, lifetime=600)
    ecr = EcrCredentials(api, clock, refresh_margin=120)
    ask(ecr)
    clock.now += 479
    assert ask(ecr) == [Credentials("AWS", "token-1")]
    clock.now += 2
    assert ask(ecr) == [Credentials("AWS", "token-2")]


def test_a_token_dated_in_the_past_is_used_a_minute_not_refetched_per_request():
    clock = Clock()
    api = FakeEcr(clock, lifetime=-3600)  # moto's tokens expire in 2015; a host clock can be off
    ecr = EcrCredentials(api, clock)
    for _ in range(3):
        assert ask(ecr) == [Credentials("AWS", "token-1")]
        clock.now += MIN_TOKEN_USE / 4
    clock.now += MIN_TOKEN_USE
    assert ask(ecr) == [Credentials("AWS", "token-2")]


def test_failures_give_no_credentials_one_warning_and_a_backoff(caplog):
    caplog.set_level(logging.INFO, logger="regcache.upstream.ecr")
    clock = Clock()
    api = FakeEcr(clock)
    api.down = True
    ecr = EcrCredentials(api, clock)
    assert ask(ecr, 10) == [None] * 10
    for _ in range(5):
        clock.now += 1
        assert ask(ecr) == [None]
    assert len(api.calls) == 1, "ECR was asked again inside the backoff"
    clock.now += BACKOFF_FIRST
    assert ask(ecr) == [None]
    assert len(api.calls) == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    message = warnings[0].getMessage()
    assert ECR_HOST in message and "Could not connect" in message and "401" in message

    api.down = False
    clock.now += 2 * BACKOFF_FIRST
    assert ask(ecr) == [Credentials("AWS", "token-3")]
    recovered = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("after 2 failed tries" in m for m in recovered), recovered


def test_a_hung_up_client_does_not_cancel_the_refresh_others_wait_for():
    clock = Clock()
    api = FakeEcr(clock)
    ecr = EcrCredentials(api, clock)

    async def scenario() -> Credentials | None:
        first = asyncio.ensure_future(ecr.credentials(ECR_HOST, SOURCE))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(ecr.credentials(ECR_HOST, SOURCE))
        await asyncio.sleep(0)
        second.cancel()
        return await first

    assert asyncio.run(scenario()) == Credentials("AWS", "token-1")
    assert len(api.calls) == 1


# --- through the Authenticator ----------------------------------------------------------------


async def no_realm(request):
    raise AssertionError("no token realm in these tests")
    return TokenAnswer(500, b"")


def test_a_password_in_the_creds_file_wins_over_ecr():
    clock = Clock()
    api = FakeEcr(clock)
    store = CredentialStore({ECR_HOST: Credentials("AWS", "static")})
    auth = Authenticator(store, no_realm, ecr=EcrCredentials(api, clock))
    assert asyncio.run(auth.credentials(ECR_HOST, ECR_HOST, "app")) == Credentials("AWS", "static")
    assert api.calls == []


def test_ecr_false_keeps_regcache_s_aws_identity_out():
    clock = Clock()
    api = FakeEcr(clock)
    store = CredentialStore({ECR_HOST: NoCredentials()})
    auth = Authenticator(store, no_realm, ecr=EcrCredentials(api, clock))
    assert asyncio.run(auth.credentials(ECR_HOST, ECR_HOST, "app")) is None
    assert api.calls == []


def test_ecr_hosts_and_ecr_entries_get_tokens_others_nothing():
    clock = Clock()
    api = FakeEcr(clock)
    store = CredentialStore({"ecr.lan": EcrAuth(region="us-east-2", endpoint="http://127.0.0.1:1")})
    auth = Authenticator(store, no_realm, ecr=EcrCredentials(api, clock))
    assert asyncio.run(auth.credentials(ECR_HOST, ECR_HOST, "app")) == Credentials("AWS", "token-1")
    assert asyncio.run(auth.credentials("ecr.lan", "ecr.lan", "app")) == Credentials("AWS", "token-2")
    assert asyncio.run(auth.credentials("ghcr.io", "ghcr.io", "app")) is None
    assert api.calls == [SOURCE, EcrAuth("us-east-2", None, "http://127.0.0.1:1")]


def test_a_header_made_from_a_replaced_token_is_not_sent():
    auth = Authenticator(CredentialStore(), no_realm)
    old, new = Credentials("AWS", "token-1"), Credentials("AWS", "token-2")
    header = asyncio.run(auth.answer(ECR_HOST, "app", old, 'Basic realm="https://x/",service="ecr.amazonaws.com"'))
    assert auth.cached_header(ECR_HOST, "app", old) == header
    assert auth.cached_header(ECR_HOST, "app", new) is None
    fresh = asyncio.run(auth.answer(ECR_HOST, "app", new, 'Basic realm="https://x/"', rejected=None))
    assert fresh != header and auth.cached_header(ECR_HOST, "app", new) == fresh


# --- the creds file -----------------------------------------------------------------------------


def test_creds_file_ecr_entries(tmp_path):
    path = tmp_path / "creds.yaml"
    path.write_text(
        f"{ECR_HOST}: {{ecr: true}}\n"
        "ecr.lan:\n"
        "  ecr:\n"
        "    region: eu-central-1\n"
        "    registry_id: '012345678901'\n"
        "    endpoint: http://127.0.0.1:4566/\n"
        "bare.lan: {ecr: }\n"
        "210987654321.dkr.ecr.us-east-1.amazonaws.com: {ecr: false}\n"
        "docker.io: {username: u, password: p}\n"
    )
    store = load_creds_file(path)
    assert store.lookup(ECR_HOST, ECR_HOST, "app") == EcrAuth()
    assert store.lookup("ecr.lan", "ecr.lan", "app") == EcrAuth("eu-central-1", "012345678901", "http://127.0.0.1:4566")
    assert store.lookup("bare.lan", "bare.lan", "app") == EcrAuth()
    off = "210987654321.dkr.ecr.us-east-1.amazonaws.com"
    assert store.lookup(off, off, "app") == NoCredentials()
    assert store.lookup("docker.io", "registry-1.docker.io", "x") == Credentials("u", "p")


@pytest.mark.parametrize(
    "text, words",
    [
        ("r.lan: {ecr: true, username: u}\n", "line 1: entry 'r.lan' has ecr and ['username']"),
        ("r.lan: {ecr: yes-please}\n", "ecr must be true, false or a mapping"),
        ("r.lan: {ecr: {zone: x}}\n", "ecr has unknown keys ['zone']"),
        ("r.lan: {ecr: {region: Europe}}\n", "ecr region 'Europe' is not an AWS region"),
        ("r.lan: {ecr: {registry_id: '123'}}\n", "ecr registry_id '123' is not a 12-digit AWS account id"),
        ("r.lan: {ecr: {registry_id: 012345670123}}\n", "quote it"),
        ("r.lan: {ecr: {endpoint: 'localhost:4566'}}\n", "ecr endpoint 'localhost:4566' must be an http://"),
    ],
)
def test_bad_ecr_entries_name_the_problem(tmp_path, text, words):
    path = tmp_path / "creds.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_creds_file(path)
    assert words in str(info.value) and str(path) in str(info.value)


def test_the_example_creds_file_has_an_ecr_entry():
    example = Path(__file__).resolve().parents[2] / "conf" / "creds.yaml"
    store = load_creds_file(example)
    entry = store.lookup("ecr.internal.example.com", "ecr.internal.example.com", "app")
    assert entry == EcrAuth(region="eu-west-1", registry_id="123456789012")
