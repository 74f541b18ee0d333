"""The rules for each answer of a logical request, without sockets: redirects, auth, limits."""

from __future__ import annotations

import pytest

from regcache.upstream.steps import MAX_REDIRECTS, Authenticate, Final, Follow, Progress, next_step

REGISTRY = "https://registry.example"


def start(method: str = "GET", creds: bool = False) -> Progress:
    return Progress(REGISTRY, f"{REGISTRY}/v2/app/blobs/sha256:aa", method, has_credentials=creds)


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_is_followed_with_the_same_method_to_the_absolute_location(status):
    step = next_step(status, {"Location": "/cdn/blob?sig=x"}, start("HEAD"))
    assert step == Follow(f"{REGISTRY}/cdn/blob?sig=x", "HEAD")


def test_a_303_turns_a_get_into_a_get_and_keeps_a_head():
    assert next_step(303, {"Location": "https://cdn.example/b"}, start("GET")) == Follow("https://cdn.example/b", "GET")
    assert next_step(303, {"Location": "https://cdn.example/b"}, start("HEAD")).method == "HEAD"


def test_a_redirect_without_location_or_past_the_limit_is_the_answer():
    assert next_step(302, {}, start()) == Final()
    progress = start()
    for _ in range(MAX_REDIRECTS):
        step = next_step(302, {"Location": "/again"}, progress)
        assert isinstance(step, Follow)
        progress = progress.after(step)
    assert next_step(302, {"Location": "/again"}, progress) == Final()


def test_a_401_is_answered_once_with_credentials_and_only_on_the_registry_origin():
    challenge = {"WWW-Authenticate": 'Bearer realm="https://auth.example/token"'}
    progress = start(creds=True)
    step = next_step(401, challenge, progress)
    assert step == Authenticate(challenge["WWW-Authenticate"])
    assert next_step(401, challenge, progress.after(step)) == Final(), "credentials refused: the client gets the 401"
    assert next_step(401, challenge, start(creds=False)) == Final(), "no credentials: transparent"
    elsewhere = progress.after(Follow("https://cdn.example/blob", "GET"))
    assert not elsewhere.same_origin
    assert next_step(401, challenge, elsewhere) == Final(), "never authenticate to a redirect target"


@pytest.mark.parametrize("status", [200, 206, 404, 429, 500])
def test_other_answers_are_final(status):
    assert next_step(status, {"Location": "/x"}, start(creds=True)) == Final()
