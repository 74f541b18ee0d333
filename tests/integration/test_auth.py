"""Upstream authentication through the cache (DESIGN "Upstream auth", invariant 7).

Without credentials the cache is transparent: the upstream's 401 and its challenge reach the
client, and the client's own Authorization goes up. With `--creds-file` the cache answers Basic
and Bearer challenges itself, fetching one token per repository from the realm. Credentials go
to the registry and its realm only: never to a redirect target (a presigned S3 URL), never into
a log line.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.peers.images import Image, build_image, make_layer, push, random_layer
from tests.peers.registry import Registry
from tests.peers.seaweed import SeaweedS3
from tests.peers.tokenserver import TokenRequest, TokenServer
from tests.support import Regcache, request, stored_blob, wait_until

REPO = "auth/app"
OTHER_REPO = "auth/other"
BASIC_USER, BASIC_PASSWORD = "bob", "basic-pw-5d1e8a7c"
TOKEN_USER, TOKEN_PASSWORD = "alice", "token-pw-93b2f06e"
S3_USER, S3_PASSWORD = "carol", "s3-pw-4a7c21d9"
WRONG_PASSWORD = "wrong-pw-0c6f3b55"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def secrets_of(user: str, password: str) -> list[str]:
    """What a password can look like on the wire or in a log line."""
    return [password, basic(user, password).split(" ", 1)[1]]


def write_creds(path: Path, ns: str, user: str, password: str) -> Path:
    path.write_text(json.dumps({ns: {"username": user, "password": password}}))  # JSON is YAML
    return path


def stored_objects(cache: Regcache) -> list[Path]:
    return cache.stored_files("blobs") + cache.stored_files("manifests") + cache.stored_files("tags")


def assert_no_secrets(cache: Regcache, secrets: list[str]) -> None:
    log = cache.log()
    assert "regcache.access" in log, "regcache logged no request at all: nothing was checked"
    leaked = [s[:8] + "…" for s in secrets if s in log]
    assert not leaked, f"credentials in the regcache log ({cache.log_path}): {leaked}"


def pull_all(cache: Regcache, ns: str, repo: str, image: Image, **headers: str) -> None:
    """Manifest by tag and every blob, as a client would, each checked byte for byte."""
    manifest = cache.manifest(ns, repo, image.tag, **headers)
    assert manifest.status == 200, manifest.body
    assert manifest.body == image.manifest_bytes
    assert manifest.header("Docker-Content-Digest") == image.manifest_digest
    for digest in image.blob_digests:
        blob = cache.blob(ns, repo, digest, **headers)
        assert blob.status == 200, blob.body
        assert blob.body == image.blob(digest)


# --- peers ------------------------------------------------------------------------------------


class RecordingTokenServer(TokenServer):
    """The tests' token server, also remembering every token it signed (to look for in logs)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.tokens: list[str] = []

    def make_token(self, subject: str, access: list[dict[str, object]], service: str) -> str:
        token = super().make_token(subject, access, service)
        self.tokens.append(token)
        return token

    def requests_for(self, repo: str) -> list[TokenRequest]:
        return [r for r in list(self.requests) if f"repository:{repo}:pull" in r.query.get("scope", [])]

    def secrets(self) -> list[str]:
        """Every token issued, whole and its signature alone (a log might cut the rest)."""
        return [part for token in self.tokens for part in (token, token.rsplit(".", 1)[1])]


@dataclass
class SeenRequest:
    method: str
    target: str
    headers: dict[str, str]

    @property
    def user_agent(self) -> str:
        return self.headers.get("user-agent", "")


_REQUEST_HEAD = re.compile(rb"^(GET|HEAD|PUT|POST|DELETE) (\S+) HTTP/1\.[01]\r\n((?:[^\r\n]+\r\n)*)\r\n", re.M)


class RecordingForwarder:
    """A TCP forwarder to a local HTTP server that keeps every byte clients sent through it.

    Put in front of SeaweedFS's S3 port and named as distribution's `regionendpoint`, it sees
    every request to "S3": the registry's own and those that follow its presigned redirects.
    Forwarding bytes unchanged keeps the Host header the signatures were made for. `delay`
    (request method, target, first bytes of the answer) -> seconds holds chosen answers back.
    """

    def __init__(self, target_port: int, delay: Callable[[str, str, bytes], float] | None = None) -> None:
        self.target_port = target_port
        self._delay = delay
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._streams: list[bytearray] = []
        self._sockets: list[socket.socket] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RecordingForwarder:
        threading.Thread(target=self._accept, name="recording-forwarder", daemon=True).start()
        return self

    def stop(self) -> None:
        self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            sock.close()

    def clear(self) -> None:
        """Forget what was recorded (call between requests, never during one)."""
        with self._lock:
            for stream in self._streams:
                del stream[:]

    def raw(self) -> bytes:
        with self._lock:
            return b"".join(bytes(s) for s in self._streams)

    def requests(self) -> list[SeenRequest]:
        with self._lock:
            streams = [bytes(s) for s in self._streams]
        return [request for stream in streams for request in _parse_requests(stream)]

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        stream = bytearray()
        try:
            server = socket.create_connection(("127.0.0.1", self.target_port))
        except OSError:
            client.close()
            return
        with self._lock:
            self._streams.append(stream)
            self._sockets += [client, server]
        upward = threading.Thread(target=self._pump, args=(client, server, stream, True), daemon=True)
        upward.start()
        self._pump(server, client, stream, False)
        upward.join()
        client.close()
        server.close()

    def _pump(self, src: socket.socket, dst: socket.socket, stream: bytearray, upward: bool) -> None:
        try:
            while chunk := src.recv(1 << 16):
                if upward:
                    with self._lock:
                        stream += chunk
                elif self._delay is not None and chunk.startswith(b"HTTP/1."):
                    with self._lock:
                        sent = _parse_requests(bytes(stream))
                    if sent:
                        time.sleep(self._delay(sent[-1].method, sent[-1].target, chunk))
                dst.sendall(chunk)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _parse_requests(stream: bytes) -> list[SeenRequest]:
    seen = []
    for match in _REQUEST_HEAD.finditer(stream):
        headers = {}
        for line in match[3].decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name:
                headers[name.strip().lower()] = value.strip()
        seen.append(SeenRequest(match[1].decode(), match[2].decode("latin-1"), headers))
    return seen


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    layers = [make_layer({"etc/auth.txt": b"behind a login\n"}), random_layer(512 * 1024, seed=71)]
    return build_image(tmp_path_factory.mktemp("auth-layout"), layers, "1.0")


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory, image: Image) -> Iterator[Registry]:
    registry = Registry(tmp_path_factory.mktemp("basic-registry"), htpasswd=(BASIC_USER, BASIC_PASSWORD))
    try:
        registry.start()
        push(image, f"{registry.host}/{REPO}:{image.tag}", creds=(BASIC_USER, BASIC_PASSWORD))
        yield registry
    finally:
        registry.close()


@dataclass
class TokenUpstream:
    server: RecordingTokenServer
    registry: Registry

    @property
    def ns(self) -> str:
        return self.registry.host


@pytest.fixture(scope="module")
def token_upstream_module(tmp_path_factory: pytest.TempPathFactory, image: Image) -> Iterator[TokenUpstream]:
    server = RecordingTokenServer(tmp_path_factory.mktemp("token-server"), user=TOKEN_USER, password=TOKEN_PASSWORD)
    server.start()
    registry = Registry(tmp_path_factory.mktemp("token-registry"), token=server.auth())
    try:
        registry.start()
        for repo in (REPO, OTHER_REPO):
            push(image, f"{registry.host}/{repo}:{image.tag}", creds=(TOKEN_USER, TOKEN_PASSWORD))
        yield TokenUpstream(server, registry)
    finally:
        registry.close()
        server.stop()


@pytest.fixture
def token_upstream(token_upstream_module: TokenUpstream) -> TokenUpstream:
    """The token-auth registry with the token server's request log emptied."""
    token_upstream_module.server.reset()
    return token_upstream_module


@pytest.fixture(scope="module")
def s3_recorder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SeaweedS3, RecordingForwarder]]:
    with SeaweedS3(tmp_path_factory.mktemp("weed")) as s3:
        forwarder = RecordingForwarder(s3.port).start()
        try:
            yield s3, forwarder
        finally:
            forwarder.stop()


@pytest.fixture(scope="module")
def s3_registry(
    tmp_path_factory: pytest.TempPathFactory, s3_recorder: tuple[SeaweedS3, RecordingForwarder], image: Image
) -> Iterator[Registry]:
    """htpasswd auth, blobs in SeaweedFS behind the recorder: blob GETs answer 307 to a presigned URL."""
    s3, forwarder = s3_recorder
    storage = dataclasses.replace(s3.storage("auth-redirect"), endpoint=forwarder.url)
    registry = Registry(tmp_path_factory.mktemp("s3-registry"), htpasswd=(S3_USER, S3_PASSWORD), s3=storage)
    try:
        registry.start()
        push(image, f"{registry.host}/{REPO}:{image.tag}", creds=(S3_USER, S3_PASSWORD))
        yield registry
    finally:
        registry.close()


# --- Basic auth -------------------------------------------------------------------------------


def test_basic_upstream_without_creds_is_transparent(make_regcache, basic_registry, image):
    ns = basic_registry.host
    cache = make_regcache("--upstream", f"{ns}={basic_registry.url}")
    direct = request(f"{basic_registry.url}/v2/{REPO}/manifests/{image.tag}")
    challenge = direct.header("WWW-Authenticate")
    assert direct.status == 401 and challenge.startswith("Basic realm=")

    manifest = cache.manifest(ns, REPO, image.tag)
    assert manifest.status == 401
    assert manifest.header("WWW-Authenticate") == challenge
    assert json.loads(manifest.body)["errors"][0]["code"] == "UNAUTHORIZED"
    for digest in image.blob_digests:
        blob = cache.blob(ns, REPO, digest)
        assert blob.status == 401
        assert blob.header("WWW-Authenticate") == challenge
    refused = cache.manifest(ns, REPO, image.tag, Authorization=basic(BASIC_USER, WRONG_PASSWORD))
    assert refused.status == 401 and refused.header("WWW-Authenticate") == challenge
    assert not stored_objects(cache), "a 401 answer was stored"

    # The client's own credentials go up with its request.
    pull_all(cache, ns, REPO, image, Authorization=basic(BASIC_USER, BASIC_PASSWORD))
    for digest in image.blob_digests:
        assert stored_blob(cache.cache_dir, digest) == image.blob(digest)
    assert_no_secrets(cache, secrets_of(BASIC_USER, BASIC_PASSWORD) + secrets_of(BASIC_USER, WRONG_PASSWORD))


def test_basic_upstream_with_creds_file_needs_no_client_credentials(make_regcache, basic_registry, image, tmp_path):
    ns = basic_registry.host
    creds = write_creds(tmp_path / "creds.yaml", ns, BASIC_USER, BASIC_PASSWORD)
    cache = make_regcache("--upstream", f"{ns}={basic_registry.url}", "-f", str(creds))
    pull_all(cache, ns, REPO, image)
    head = cache.manifest(ns, REPO, image.manifest_digest, method="HEAD")
    assert head.status == 200 and head.header("Docker-Content-Digest") == image.manifest_digest
    assert_no_secrets(cache, secrets_of(BASIC_USER, BASIC_PASSWORD))


def test_basic_creds_file_with_wrong_password_gives_the_client_the_401(make_regcache, basic_registry, image, tmp_path):
    ns = basic_registry.host
    creds = write_creds(tmp_path / "creds.yaml", ns, BASIC_USER, WRONG_PASSWORD)
    cache = make_regcache("--upstream", f"{ns}={basic_registry.url}", "-f", str(creds))
    challenge = request(f"{basic_registry.url}/v2/").header("WWW-Authenticate")

    manifest = cache.manifest(ns, REPO, image.tag)
    assert manifest.status == 401
    assert manifest.header("WWW-Authenticate") == challenge
    blob = cache.blob(ns, REPO, image.layer_digests[1])
    assert blob.status == 401 and blob.header("WWW-Authenticate") == challenge
    assert not stored_objects(cache), "a 401 answer was stored"

    # The client answers the challenge itself, and the cache lets it.
    pull_all(cache, ns, REPO, image, Authorization=basic(BASIC_USER, BASIC_PASSWORD))
    assert_no_secrets(cache, secrets_of(BASIC_USER, BASIC_PASSWORD) + secrets_of(BASIC_USER, WRONG_PASSWORD))


# --- Token auth -------------------------------------------------------------------------------


def test_token_upstream_without_creds_is_transparent(make_regcache, token_upstream, image):
    ts, registry, ns = token_upstream.server, token_upstream.registry, token_upstream.ns
    cache = make_regcache("--upstream", f"{ns}={registry.url}")
    direct = request(f"{registry.url}/v2/{REPO}/manifests/{image.tag}")
    challenge = direct.header("WWW-Authenticate")
    assert direct.status == 401 and challenge.startswith(f'Bearer realm="{ts.realm}"')

    manifest = cache.manifest(ns, REPO, image.tag)
    assert manifest.status == 401
    assert manifest.header("WWW-Authenticate") == challenge
    blob = cache.blob(ns, REPO, image.config_digest)
    assert blob.status == 401
    assert blob.header("WWW-Authenticate") == challenge
    assert not stored_objects(cache), "a 401 answer was stored"
    assert ts.requests == [], "without a creds file the cache must not ask the realm itself"

    # As containerd does: get a token from the realm, retry through the cache with it.
    got = request(
        f"{ts.realm}?service={ts.service}&scope=repository:{REPO}:pull",
        headers={"Authorization": basic(TOKEN_USER, TOKEN_PASSWORD)},
    )
    assert got.status == 200
    token = json.loads(got.body)["token"]
    pull_all(cache, ns, REPO, image, Authorization=f"Bearer {token}")
    assert len(ts.requests) == 1, "only the client asked the realm"
    assert_no_secrets(cache, secrets_of(TOKEN_USER, TOKEN_PASSWORD) + ts.secrets())


def test_token_creds_one_token_per_repository(make_regcache, token_upstream, image, tmp_path):
    ts, registry, ns = token_upstream.server, token_upstream.registry, token_upstream.ns
    creds = write_creds(tmp_path / "creds.yaml", ns, TOKEN_USER, TOKEN_PASSWORD)
    cache = make_regcache("--upstream", f"{ns}={registry.url}", "-f", str(creds))

    # A pull as containerd makes it: resolve the tag, fetch the manifest, then blobs in parallel.
    head = cache.manifest(ns, REPO, image.tag, method="HEAD")
    assert head.status == 200 and head.header("Docker-Content-Digest") == image.manifest_digest
    manifest = cache.manifest(ns, REPO, image.manifest_digest)
    assert manifest.status == 200 and manifest.body == image.manifest_bytes
    with ThreadPoolExecutor(len(image.blob_digests)) as pool:
        blobs = list(pool.map(lambda d: cache.blob(ns, REPO, d), image.blob_digests))
    for digest, blob in zip(image.blob_digests, blobs, strict=True):
        assert blob.status == 200 and blob.body == image.blob(digest)

    asked = ts.requests_for(REPO)
    assert len(asked) == 1, f"expected one token for {REPO}, the realm was asked {len(asked)} times"
    assert asked[0].authorization == basic(TOKEN_USER, TOKEN_PASSWORD)
    assert asked[0].query.get("service") == [ts.service]
    assert asked[0].status == 200
    assert ts.issued == 1

    # Another repository needs a token of its own scope: one more request, no more.
    other = cache.manifest(ns, OTHER_REPO, image.tag)
    assert other.status == 200 and other.body == image.manifest_bytes
    assert cache.blob(ns, OTHER_REPO, image.layer_digests[0]).status == 200
    assert len(ts.requests_for(OTHER_REPO)) == 1
    assert len(ts.requests_for(REPO)) == 1
    assert ts.issued == 2
    assert all(r.authorization == basic(TOKEN_USER, TOKEN_PASSWORD) for r in ts.requests)
    assert_no_secrets(cache, secrets_of(TOKEN_USER, TOKEN_PASSWORD) + ts.secrets())


def test_concurrent_first_requests_share_one_token(make_regcache, token_upstream, image, tmp_path):
    """A challenge that arrives after another request of the same repository got its token is
    answered with that token, not with a second fetch (what many nodes pulling one image do)."""
    ts, registry, ns = token_upstream.server, token_upstream.registry, token_upstream.ns

    def slow_challenges(method: str, target: str, answer: bytes) -> float:
        # Both requests go up before any token exists; the blob's 401 returns after the
        # manifest's has been answered with a token.
        if not answer.startswith(b"HTTP/1.1 401"):
            return 0.0
        return 0.8 if "/blobs/" in target else 0.2

    forwarder = RecordingForwarder(registry.port, delay=slow_challenges).start()
    try:
        creds = write_creds(tmp_path / "creds.yaml", ns, TOKEN_USER, TOKEN_PASSWORD)
        cache = make_regcache("--upstream", f"{ns}={forwarder.url}", "-f", str(creds))
        with ThreadPoolExecutor(2) as pool:
            head = pool.submit(cache.manifest, ns, REPO, image.tag, method="HEAD")
            blob = pool.submit(cache.blob, ns, REPO, image.config_digest)
            head_status, blob = head.result().status, blob.result()
        unauthenticated = [r for r in forwarder.requests() if "authorization" not in r.headers]
    finally:
        forwarder.stop()
    assert head_status == 200
    assert blob.status == 200 and blob.body == image.config_bytes
    assert len(unauthenticated) == 2, "test setup: both requests should have gone up before any token existed"
    assert len(ts.requests_for(REPO)) == 1, "the second challenge fetched another token instead of reusing the first"


def test_token_is_fetched_again_when_it_expires(make_regcache, token_upstream, image, tmp_path):
    ts, registry, ns = token_upstream.server, token_upstream.registry, token_upstream.ns
    creds = write_creds(tmp_path / "creds.yaml", ns, TOKEN_USER, TOKEN_PASSWORD)
    # Every tag skipped: each manifest GET goes upstream and needs a valid token.
    cache = make_regcache("--upstream", f"{ns}={registry.url}", "-f", str(creds), "-t", ".")
    ts.expires_in = 11  # the cache keeps it ~1 s (it renews 10 s before expiry)
    try:
        for _ in range(2):
            assert cache.manifest(ns, REPO, image.tag).body == image.manifest_bytes
        assert len(ts.requests_for(REPO)) == 1, "a fresh token must be reused"
        statuses = []

        def renewed() -> bool:
            statuses.append(cache.manifest(ns, REPO, image.tag).status)
            return len(ts.requests_for(REPO)) >= 2

        assert wait_until(renewed, timeout=10, interval=0.1), "the token was never renewed"
    finally:
        ts.expires_in = 300
    assert set(statuses) == {200}
    assert len(ts.requests_for(REPO)) == 2
    assert_no_secrets(cache, secrets_of(TOKEN_USER, TOKEN_PASSWORD) + ts.secrets())


def test_token_creds_refused_by_the_realm_give_the_client_the_401(make_regcache, token_upstream, image, tmp_path):
    ts, registry, ns = token_upstream.server, token_upstream.registry, token_upstream.ns
    creds = write_creds(tmp_path / "creds.yaml", ns, TOKEN_USER, WRONG_PASSWORD)
    cache = make_regcache("--upstream", f"{ns}={registry.url}", "-f", str(creds))
    challenge = request(f"{registry.url}/v2/{REPO}/manifests/{image.tag}").header("WWW-Authenticate")

    manifest = cache.manifest(ns, REPO, image.tag)
    assert manifest.status == 401
    assert manifest.header("WWW-Authenticate") == challenge
    assert [r.status for r in ts.requests_for(REPO)] == [401]
    assert ts.requests_for(REPO)[0].authorization == basic(TOKEN_USER, WRONG_PASSWORD)
    assert not stored_objects(cache), "a 401 answer was stored"

    token = ts.make_token(TOKEN_USER, [{"type": "repository", "name": REPO, "actions": ["pull"]}], ts.service)
    pull_all(cache, ns, REPO, image, Authorization=f"Bearer {token}")
    assert_no_secrets(cache, secrets_of(TOKEN_USER, WRONG_PASSWORD) + ts.secrets())


def test_credentials_stay_out_of_the_log_at_debug_level(make_regcache, token_upstream, basic_registry, image, tmp_path):
    ts, token_ns = token_upstream.server, token_upstream.ns
    basic_ns = basic_registry.host
    creds = write_creds(tmp_path / "creds.yaml", token_ns, TOKEN_USER, TOKEN_PASSWORD)
    cache = make_regcache(
        *("--upstream", f"{token_ns}={token_upstream.registry.url}"),
        *("--upstream", f"{basic_ns}={basic_registry.url}"),
        *("-f", str(creds), "-l", "debug"),
    )
    pull_all(cache, token_ns, REPO, image)  # tokens fetched and sent by the cache
    assert ts.issued == 1
    pull_all(cache, basic_ns, REPO, image, Authorization=basic(BASIC_USER, BASIC_PASSWORD))
    bearer = ts.make_token(TOKEN_USER, [{"type": "repository", "name": OTHER_REPO, "actions": ["pull"]}], ts.service)
    other = cache.manifest(token_ns, OTHER_REPO, image.tag, Authorization=f"Bearer {bearer}")
    assert other.status == 200
    assert cache.manifest(basic_ns, REPO, "nope", Authorization=basic(BASIC_USER, WRONG_PASSWORD)).status == 401
    assert " DEBUG " in cache.log(), "-l debug wrote no debug lines"
    assert_no_secrets(
        cache,
        secrets_of(TOKEN_USER, TOKEN_PASSWORD)
        + secrets_of(BASIC_USER, BASIC_PASSWORD)
        + secrets_of(BASIC_USER, WRONG_PASSWORD)
        + ts.secrets(),
    )


# --- Redirects ------------------------------------------------------------------------------


@pytest.mark.parametrize("who_authenticates", ["creds-file", "client"])
def test_redirect_to_presigned_s3_never_carries_credentials(
    make_regcache, s3_registry, s3_recorder, image, tmp_path, who_authenticates
):
    _, forwarder = s3_recorder
    ns = s3_registry.host
    args = ["--upstream", f"{ns}={s3_registry.url}", "-l", "debug"]
    headers = {}
    if who_authenticates == "creds-file":
        args += ["-f", str(write_creds(tmp_path / "creds.yaml", ns, S3_USER, S3_PASSWORD))]
    else:
        headers["Authorization"] = basic(S3_USER, S3_PASSWORD)
    cache = make_regcache(*args)
    # The setup is what the test needs: blob GETs go to the recorder by a presigned redirect.
    direct = request(
        f"{s3_registry.url}/v2/{REPO}/blobs/{image.config_digest}",
        headers={"Authorization": basic(S3_USER, S3_PASSWORD)},
    )
    assert direct.status == 307 and direct.header("Location").startswith(forwarder.url + "/")
    forwarder.clear()

    for digest in image.blob_digests:
        blob = cache.blob(ns, REPO, digest, **headers)
        assert blob.status == 200, blob.body
        assert blob.body == image.blob(digest)
        assert stored_blob(cache.cache_dir, digest) == image.blob(digest)

    seen = forwarder.requests()
    from_cache = [r for r in seen if r.user_agent.startswith("regcache/")]
    for digest in image.blob_digests:
        assert any(
            r.method == "GET" and digest.split(":")[1] in r.target and "X-Amz-Signature=" in r.target
            for r in from_cache
        ), f"regcache did not follow the redirect for {digest} to S3"
    assert [r.headers["authorization"] for r in from_cache if "authorization" in r.headers] == []
    assert not [r for r in seen if r.headers.get("authorization", "").lower().startswith(("basic", "bearer"))]
    raw = forwarder.raw()
    assert not [s for s in secrets_of(S3_USER, S3_PASSWORD) if s.encode() in raw]
    # A presigned URL is a credential as well: its signature must not be logged either.
    signatures = [m for r in from_cache for m in re.findall(r"X-Amz-Signature=([0-9a-f]+)", r.target)]
    assert signatures
    assert_no_secrets(cache, secrets_of(S3_USER, S3_PASSWORD) + signatures)


# --- --private-registry: cached content only for clients the registry accepts -----------------------


def head_count(registry: Registry, digest: str) -> int:
    return sum(1 for e in registry.requests() if e.method == "HEAD" and e.path.endswith(f"/blobs/{digest}"))


def test_private_blobs_are_served_from_the_cache_only_to_clients_the_registry_accepts(
    make_regcache, basic_registry, image, fake
):
    ns = basic_registry.host
    cache = make_regcache("--upstream", f"{ns}={basic_registry.url}", "--private-registry", ns, *fake.upstream_arg())
    digest = image.layer_digests[1]
    good = {"Authorization": basic(BASIC_USER, BASIC_PASSWORD)}
    first = cache.blob(ns, REPO, digest, **good)
    assert first.status == 200 and first.body == image.blob(digest)
    # Stored under its registry, not where a public pull of the digest would find it.
    private_path = cache.cache_dir / "private" / ns / "blobs" / "sha256" / digest[7:9] / digest[7:]
    assert wait_until(private_path.exists, timeout=10)
    assert not (cache.cache_dir / "blobs").exists() or cache.stored_files("blobs") == []

    gets = basic_registry.blob_get_count(digest)
    again = cache.blob(ns, REPO, digest, **good)
    assert again.status == 200 and again.body == image.blob(digest)
    assert basic_registry.blob_get_count(digest) == gets, "the second pull is a cache hit"

    # No credentials, or wrong ones: the registry's 401 and its challenge, never the bytes.
    challenge = request(f"{basic_registry.url}/v2/").header("WWW-Authenticate")
    heads = head_count(basic_registry, digest)
    for headers in ({}, {"Authorization": basic(BASIC_USER, WRONG_PASSWORD)}):
        refused = cache.blob(ns, REPO, digest, **headers)
        assert refused.status == 401 and refused.header("WWW-Authenticate") == challenge
        assert image.blob(digest) not in refused.body
        head = cache.blob(ns, REPO, digest, method="HEAD", **headers)
        assert head.status == 401
    assert head_count(basic_registry, digest) == heads + 4, "every refused client was checked upstream"

    # A public registry asked for the same digest does not get the private copy.
    public = cache.blob(fake.ns, REPO, digest)
    assert public.status == 404 and fake.count(f"/v2/{REPO}/blobs/{digest}") == 1
    assert_no_secrets(cache, secrets_of(BASIC_USER, BASIC_PASSWORD) + secrets_of(BASIC_USER, WRONG_PASSWORD))


def test_private_access_checks_are_remembered_briefly_per_credential_and_repository(
    make_regcache, basic_registry, image
):
    ns = basic_registry.host
    cache = make_regcache("--upstream", f"{ns}={basic_registry.url}", "--private-registry", ns)
    good = {"Authorization": basic(BASIC_USER, BASIC_PASSWORD)}
    digest = image.config_digest
    heads = head_count(basic_registry, digest)
    for _ in range(3):
        assert cache.blob(ns, REPO, digest, **good).status == 200
    assert head_count(basic_registry, digest) == heads + 1
    # Another repository is another question: the registry serves blobs only through their own.
    assert cache.blob(ns, "auth/unknown", digest, **good).status == 404
    assert head_count(basic_registry, digest) == heads + 2


def test_private_blobs_with_a_creds_file_are_checked_with_the_configured_credentials(
    make_regcache, basic_registry, image, tmp_path
):
    """The operator's creds file lets clients without credentials pull: the check says so too."""
    ns = basic_registry.host
    creds = write_creds(tmp_path / "creds.yaml", ns, BASIC_USER, BASIC_PASSWORD)
    cache = make_regcache("--upstream", f"{ns}={basic_registry.url}", "--private-registry", ns, "-f", str(creds))
    pull_all(cache, ns, REPO, image)
    pull_all(cache, ns, REPO, image)
    assert cache.stored_files("private")
    assert_no_secrets(cache, secrets_of(BASIC_USER, BASIC_PASSWORD))


def test_private_content_is_not_served_when_the_registry_cannot_be_asked(make_regcache, basic_registry, image):
    ns = basic_registry.host
    cache = make_regcache("--upstream", f"{ns}={basic_registry.url}", "--private-registry", ns)
    good = {"Authorization": basic(BASIC_USER, BASIC_PASSWORD)}
    digest = image.layer_digests[0]
    assert cache.blob(ns, REPO, digest, **good).status == 200
    basic_registry.stop()
    try:
        # Even a client that was allowed a moment ago, once the remembered answer has expired,
        # or any other client, gets no cached private bytes without the registry's yes.
        other = cache.blob(ns, REPO, digest, Authorization=basic(BASIC_USER, WRONG_PASSWORD))
        assert other.status == 502 and image.blob(digest) not in other.body
    finally:
        basic_registry.start()
