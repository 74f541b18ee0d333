"""Property tests of every parser that sees client or upstream input: whatever arrives, each
either answers or refuses with its own error, never crashes, and no accepted name makes a
storage key that leaves the cache dir."""

from __future__ import annotations

import asyncio
import json
import os.path

from hypothesis import given, settings
from hypothesis import strategies as st

from regcache.cache.ranges import ByteRange, RangeSpec, Unsatisfiable, parse_range
from regcache.config import Settings
from regcache.credentials import Credentials, CredentialStore
from regcache.errors import BadRequest
from regcache.oci import mediatypes
from regcache.oci.reference import parse_blob_ref, parse_manifest_ref, parse_registry
from regcache.storage.base import blob_key, manifest_key, manifest_meta_key, private_blob_key, tag_key
from regcache.upstream.auth import Authenticator, TokenAnswer, parse_www_authenticate
from regcache.upstream.guard import AddressGuard

ROOT = "/var/cache/regcache"
# Names as they reach the parsers after URL decoding: anything, with path-ish characters often.
hostile = st.one_of(
    st.text(max_size=300),
    st.text(alphabet="abc019./-_:@%~[]\\\x00 ", max_size=80),
    st.sampled_from(["..", ".", "../..", "a/../b", "/etc/passwd", "a//b", "%2e%2e", "..\\..", "a/./b", ".hidden"]),
)
digests = st.one_of(
    hostile,
    st.builds(lambda h: "sha256:" + h, st.text(alphabet="0123456789abcdef./", min_size=60, max_size=70)),
    st.builds(lambda a, h: f"{a}:{h}", st.text(max_size=20), st.text(max_size=200)),
)


def inside_root(key: str) -> bool:
    path = os.path.normpath(os.path.join(ROOT, key))
    return path.startswith(ROOT + "/") and ".." not in key.split("/") and not key.startswith("/")


@settings(max_examples=500)
@given(ns=hostile, repo=hostile, reference=st.one_of(hostile, digests))
def test_accepted_manifest_refs_make_keys_inside_the_cache(ns, repo, reference):
    try:
        ref = parse_manifest_ref(parse_registry(ns), repo, reference)
    except BadRequest:
        return
    keys = [tag_key(ref.registry, ref.repo, ref.tag)] if ref.tag is not None else []
    if ref.digest is not None:
        keys += [manifest_key(ref.digest), manifest_meta_key(ref.digest)]
    assert all(inside_root(k) for k in keys), keys


@settings(max_examples=500)
@given(ns=hostile, repo=hostile, digest=digests)
def test_accepted_blob_refs_make_keys_inside_the_cache(ns, repo, digest):
    try:
        ref = parse_blob_ref(parse_registry(ns), repo, digest)
    except BadRequest:
        return
    assert inside_root(blob_key(ref.digest)) and inside_root(private_blob_key(ref.registry, ref.digest))


@settings(max_examples=300)
@given(
    header=st.one_of(st.text(max_size=300), st.from_regex(r"\s*bytes\s*=\s*\d{0,25}\s*-\s*\d{0,25}\s*")),
    size=st.integers(0, 1 << 45),
)
def test_range_headers(header, size):
    spec = parse_range(header)
    if spec is None:
        return
    assert isinstance(spec, RangeSpec)
    try:
        byte_range = spec.resolve(size)
    except Unsatisfiable:
        return
    assert isinstance(byte_range, ByteRange)
    assert 0 <= byte_range.start < byte_range.end <= size
    assert byte_range.content_range(size).startswith("bytes ")


def test_a_suffix_range_of_an_empty_body_is_unsatisfiable():
    """Found by test_range_headers: `bytes=-5` of 0 bytes once made `Content-Range: bytes 0--1/0`."""
    spec = parse_range("bytes=-5")
    try:
        spec.resolve(0)
    except Unsatisfiable:
        return
    raise AssertionError("resolved a range of an empty body")


@settings(max_examples=500)
@given(accept=st.lists(st.text(max_size=200), max_size=5), media_type=st.text(max_size=100))
def test_accept_headers(accept, media_type):
    accepted = mediatypes.accepted_types(accept)
    assert accepted is None or all(isinstance(t, str) for t in accepted)
    assert isinstance(mediatypes.allows(accepted, media_type), bool)


challenge_parts = st.one_of(
    st.text(max_size=100),
    st.sampled_from(["Bearer", "Basic", "bearer", "realm=", 'realm="', 'realm="http://127.0.0.1:1/t"', ",", '"', "\\"]),
    st.builds(lambda k, v: f'{k}="{v}"', st.text(max_size=20), st.text(max_size=40)),
)


@settings(max_examples=500, deadline=None)
@given(value=st.lists(challenge_parts, max_size=8).map(" ".join), token_body=st.binary(max_size=200))
def test_www_authenticate_challenges_are_parsed_and_answered_without_crashing(value, token_body):
    challenges = parse_www_authenticate(value)
    assert all(isinstance(c.scheme, str) and isinstance(dict(c.params), dict) for c in challenges)

    async def realm(request):
        return TokenAnswer(200, token_body)

    async def answer():
        auth = Authenticator(CredentialStore({"docker.io": Credentials("u", "p")}), realm)
        return await auth.answer("docker.io", "library/alpine", Credentials("u", "p"), value)

    header = asyncio.run(answer())
    assert header is None or header.startswith(("Basic ", "Bearer "))


@settings(max_examples=300)
@given(ns=hostile)
def test_the_registry_guard_refuses_with_its_own_error(ns):
    guard = AddressGuard(Settings(allow_registries=("*.example.com", "docker.io")))
    try:
        guard.check_registry(parse_registry(ns))
    except BadRequest as exc:
        assert exc.status in (400, 403) and json.dumps(exc.message)
