"""Smoke tests for the peer harness: each peer does the real thing the regcache tests need."""

from __future__ import annotations

import base64
import gzip
import http.client
import io
import json
import shutil
import ssl
import subprocess
import tarfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.peers import images
from tests.peers.binaries import require
from tests.peers.containerd import Containerd
from tests.peers.net import clean_env, free_port, wait_for_http
from tests.peers.registry import Registry
from tests.peers.seaweed import SeaweedS3
from tests.peers.tinyproxy import Tinyproxy
from tests.peers.tls import make_ca_and_cert
from tests.peers.tokenserver import TokenServer

pytestmark = pytest.mark.timeout(120)


def _get(url: str, headers: dict[str, str] | None = None, method: str = "GET", ctx=None):
    """One request without proxies; returns (status, headers, body)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname, parts.port, context=ctx, timeout=10
        )
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    conn.request(method, path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body


@pytest.fixture(scope="module")
def small_image(tmp_path_factory: pytest.TempPathFactory) -> images.Image:
    layout = tmp_path_factory.mktemp("layout")
    layers = [
        images.make_layer({"etc/regcache-test.txt": b"hello from regcache\n"}),
        images.random_layer(256 * 1024, seed=1),
    ]
    return images.build_image(layout, layers, "v1")


@pytest.fixture(scope="module")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    with Containerd(tmp_path_factory.mktemp("containerd")) as c:
        yield c


# -- net / images ------------------------------------------------------------------------
def test_clean_env_drops_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("https_proxy", "http://proxy.invalid:1")
    monkeypatch.setenv("NO_PROXY", "x")
    monkeypatch.setenv("AWS_CA_BUNDLE", "/nope")
    env = clean_env(HTTPS_PROXY="http://127.0.0.1:9")
    assert "https_proxy" not in env and "NO_PROXY" not in env and "AWS_CA_BUNDLE" not in env
    assert env["HTTPS_PROXY"] == "http://127.0.0.1:9"


def test_require_skips_or_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Path(require("skopeo")).is_absolute()
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="apt-get install skopeo"):
        monkeypatch.setenv("PATH", "/nonexistent")
        require("skopeo")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no-such-binary"):
        require("no-such-binary")


def test_layers_are_real_tar_gz() -> None:
    layer = images.make_layer({"a/b.txt": b"x" * 10, "c": b""})
    with tarfile.open(fileobj=io.BytesIO(layer), mode="r:gz") as tar:
        names = tar.getnames()
        assert tar.extractfile("a/b.txt").read() == b"x" * 10  # type: ignore[union-attr]
    assert names == ["a", "a/b.txt", "c"]
    assert images.diff_id(layer) == images.sha256_digest(gzip.decompress(layer))
    assert images.make_layer({"a/b.txt": b"x" * 10, "c": b""}) == layer  # deterministic

    size = 3 * 1024 * 1024
    rnd = images.random_layer(size, seed=42)
    assert abs(len(rnd) - size) < size // 100
    assert images.random_layer(size, seed=42) is rnd  # cached per (size, seed)
    assert images.random_layer(size) != images.random_layer(size)
    raw = gzip.decompress(rnd)
    assert images.diff_id(rnd) == images.sha256_digest(raw)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        (member,) = tar.getmembers()
        assert member.size == size - 2048
    # incompressible: level-9 gzip of the payload gains nothing
    assert len(gzip.compress(raw[512:200_000], 9)) > 199_000


def test_build_image_layout(small_image: images.Image) -> None:
    layout = small_image.layout_dir
    assert json.loads((layout / "oci-layout").read_text())["imageLayoutVersion"] == "1.0.0"
    index = json.loads((layout / "index.json").read_text())
    (desc,) = [m for m in index["manifests"] if m["annotations"][images.REF_NAME] == "v1"]
    assert desc["digest"] == small_image.manifest_digest
    manifest = json.loads(small_image.manifest_bytes)
    assert [x["digest"] for x in manifest["layers"]] == list(small_image.layer_digests)
    config = json.loads(small_image.config_bytes)
    assert config["rootfs"]["diff_ids"] == [images.diff_id(x) for x in small_image.layers]
    for digest in (small_image.manifest_digest, *small_image.blob_digests):
        blob = layout / "blobs" / "sha256" / digest.split(":")[1]
        assert images.sha256_digest(blob.read_bytes()) == digest


# -- registry ----------------------------------------------------------------------------
def test_registry_push_pull_log_and_restart(tmp_path: Path, small_image: images.Image) -> None:
    with Registry(tmp_path / "reg") as reg:
        images.push(small_image, f"{reg.host}/peers/small:v1")  # checks the pushed digest
        status, headers, body = _get(
            f"{reg.url}/v2/peers/small/manifests/v1",
            {"Accept": images.MANIFEST_MEDIA_TYPE},
        )
        assert status == 200 and body == small_image.manifest_bytes
        assert headers["docker-content-digest"] == small_image.manifest_digest

        layer = small_image.layer_digests[1]
        assert reg.blob_get_count(layer) == 0  # skopeo's push only HEADs blobs
        status, _, body = _get(f"{reg.url}/v2/peers/small/blobs/{layer}")
        assert status == 200 and body == small_image.layers[1]
        assert reg.blob_get_count(layer) == 1
        assert ("GET", f"/v2/peers/small/blobs/{layer}", 200) in reg.request_log()
        assert ("PUT", "/v2/peers/small/manifests/v1", 201) in reg.request_log()

        port = reg.port
        reg.stop()
        with pytest.raises(OSError):
            _get(f"{reg.url}/v2/")
        reg.start()
        assert reg.port == port
        status, _, body = _get(f"{reg.url}/v2/peers/small/blobs/{layer}")
        assert status == 200 and body == small_image.layers[1]
        assert reg.blob_get_count(layer) == 2  # the log survives restarts


def test_registry_start_failure_shows_log(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "bad", tls=(tmp_path / "missing.pem", tmp_path / "missing.key"))
    with pytest.raises(RuntimeError, match="missing.pem"):
        reg.start(timeout=5)
    reg.close()


def test_registry_htpasswd(tmp_path: Path, small_image: images.Image) -> None:
    with Registry(tmp_path / "reg", htpasswd=("bob", "hunter2")) as reg:
        status, headers, _ = _get(f"{reg.url}/v2/")
        assert status == 401 and headers["www-authenticate"].startswith("Basic realm=")
        with pytest.raises(RuntimeError):
            images.push(small_image, f"{reg.host}/peers/basic:v1")
        images.push(small_image, f"{reg.host}/peers/basic:v1", creds=("bob", "hunter2"))
        auth = "Basic " + base64.b64encode(b"bob:hunter2").decode()
        status, _, body = _get(
            f"{reg.url}/v2/peers/basic/manifests/{small_image.manifest_digest}",
            {"Authorization": auth, "Accept": images.MANIFEST_MEDIA_TYPE},
        )
        assert status == 200 and body == small_image.manifest_bytes


def test_token_auth_registry(tmp_path: Path, small_image: images.Image) -> None:
    with (
        TokenServer(tmp_path / "token", user="alice", password="s3cret") as ts,
        Registry(tmp_path / "reg", token=ts.auth()) as reg,
    ):
        status, headers, _ = _get(f"{reg.url}/v2/")
        challenge = headers["www-authenticate"]
        assert status == 401 and f'realm="{ts.realm}"' in challenge
        assert f'service="{ts.service}"' in challenge

        # anonymous and wrong credentials get no token
        assert _get(f"{ts.realm}?service={ts.service}&scope=repository:a/b:pull")[0] == 401
        bad = "Basic " + base64.b64encode(b"alice:wrong").decode()
        assert _get(f"{ts.realm}?scope=repository:a/b:pull", {"Authorization": bad})[0] == 401
        assert ts.issued == 0

        images.push(small_image, f"{reg.host}/peers/tok:v1", creds=("alice", "s3cret"))
        assert ts.issued >= 1

        # distribution accepts the JWT: a plain HTTP client pulls with it
        good = "Basic " + base64.b64encode(b"alice:s3cret").decode()
        q = f"service={ts.service}&scope=repository:peers/tok:pull"
        status, _, body = _get(f"{ts.realm}?{q}", {"Authorization": good})
        token = json.loads(body)
        assert status == 200 and token["token"] == token["access_token"]
        assert token["expires_in"] == 300 and token["issued_at"]
        status, _, body = _get(
            f"{reg.url}/v2/peers/tok/blobs/{small_image.layer_digests[0]}",
            {"Authorization": f"Bearer {token['token']}"},
        )
        assert status == 200 and body == small_image.layers[0]
        # a pull-only token cannot push
        status, _, _ = _get(
            f"{reg.url}/v2/peers/tok/blobs/uploads/",
            {"Authorization": f"Bearer {token['token']}"},
            method="POST",
        )
        assert status == 401

        # and so does skopeo, fetching its own token with the credentials
        before = ts.issued
        out = tmp_path / "pulled"
        images_pull = [
            require("skopeo"),
            "--insecure-policy",
            "copy",
            "--src-tls-verify=false",
            "--src-creds=alice:s3cret",
            f"docker://{reg.host}/peers/tok:v1",
            f"oci:{out}:v1",
        ]
        subprocess.run(images_pull, check=True, capture_output=True, env=clean_env())
        assert ts.issued > before
        pulled = json.loads((out / "index.json").read_text())["manifests"][0]["digest"]
        assert pulled == small_image.manifest_digest
        assert all(r.path == "/token" for r in ts.requests)
        assert any(r.authorization == good for r in ts.requests)


def test_tls_registry(tmp_path: Path, small_image: images.Image) -> None:
    ca, cert, key = make_ca_and_cert(tmp_path / "pki")
    cert_dir = tmp_path / "certs.d"
    cert_dir.mkdir()
    shutil.copy(ca, cert_dir / "ca.crt")
    with Registry(tmp_path / "reg", tls=(cert, key)) as reg:
        assert reg.url.startswith("https://127.0.0.1:")
        images.push(small_image, f"{reg.host}/peers/tls:v1", tls_verify=True, cert_dir=cert_dir)
        ctx = ssl.create_default_context(cafile=str(ca))
        status, _, body = _get(
            f"https://localhost:{reg.port}/v2/peers/tls/manifests/v1",
            {"Accept": images.MANIFEST_MEDIA_TYPE},
            ctx=ctx,
        )
        assert status == 200 and body == small_image.manifest_bytes
        with pytest.raises(ssl.SSLError):
            _get(f"{reg.url}/v2/", ctx=ssl.create_default_context())  # system CAs: rejected


def test_registry_proxy_mode(tmp_path: Path, small_image: images.Image) -> None:
    with Registry(tmp_path / "up") as upstream:
        images.push(small_image, f"{upstream.host}/peers/proxied:v1")
        with Registry(tmp_path / "proxy", proxy_remote=upstream.url) as proxy:
            status, _, body = _get(f"{proxy.url}/v2/peers/proxied/manifests/v1", {"Accept": images.MANIFEST_MEDIA_TYPE})
            assert status == 200 and body == small_image.manifest_bytes
            layer = small_image.layer_digests[1]
            status, _, body = _get(f"{proxy.url}/v2/peers/proxied/blobs/{layer}")
            assert status == 200 and body == small_image.layers[1]
            # distribution 2.8's proxy fetches a cold blob twice: once for the client and
            # once more to store it.
            cold = upstream.blob_get_count(layer)
            assert 1 <= cold <= 2
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:  # wait for the background store
                status, _, body = _get(f"{proxy.url}/v2/peers/proxied/blobs/{layer}")
                assert status == 200 and body == small_image.layers[1]
                if upstream.blob_get_count(layer) == cold:
                    break
                cold = upstream.blob_get_count(layer)
            assert upstream.blob_get_count(layer) == cold  # warm: served from its own storage


# -- S3 ----------------------------------------------------------------------------------
def test_s3_registry_redirects_to_seaweed(tmp_path: Path, small_image: images.Image) -> None:
    with SeaweedS3(tmp_path / "weed") as s3:
        assert s3.startup_seconds is not None and s3.startup_seconds < 20
        with Registry(tmp_path / "reg", s3=s3.storage("registry-blobs")) as reg:
            images.push(small_image, f"{reg.host}/peers/s3:v1")
            layer = small_image.layer_digests[1]
            status, headers, _ = _get(f"{reg.url}/v2/peers/s3/blobs/{layer}")
            assert status == 307
            location = headers["location"]
            assert location.startswith(f"{s3.endpoint}/registry-blobs/")
            assert "X-Amz-Signature=" in location
            status, _, body = _get(location)  # presigned: no credentials needed
            assert status == 200 and body == small_image.layers[1]
            assert reg.blob_get_count(layer) == 1
            keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket="registry-blobs")["Contents"]]
            assert any(layer.split(":")[1] in k for k in keys)


# -- tinyproxy -----------------------------------------------------------------------------
def test_tinyproxy_connect_any_port(tmp_path: Path) -> None:
    with Registry(tmp_path / "reg") as reg, Tinyproxy(tmp_path / "proxy") as proxy:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        conn.set_tunnel(reg.host)  # CONNECT to a random high port: allowed
        conn.request("GET", "/v2/")
        resp = conn.getresponse()
        resp.read()
        conn.close()
        assert resp.status == 200
        assert f"CONNECT {reg.host}" in proxy.connect_log()
        assert proxy.connect_targets() == [reg.host]
        assert reg.request_log().count(("GET", "/v2/", 200)) == 2  # readiness probe + tunnel


def test_tinyproxy_basic_auth(tmp_path: Path) -> None:
    with Registry(tmp_path / "reg") as reg, Tinyproxy(tmp_path / "proxy", basic_auth=("px", "pw")) as proxy:
        for auth, expected in ((None, 407), ("px:pw", 200)):
            conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
            headers = {"Proxy-Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
            conn.request("GET", f"{reg.url}/v2/", headers=headers)
            resp = conn.getresponse()
            resp.read()
            conn.close()
            assert resp.status == expected
        assert proxy.requests().count(f"GET {reg.url}/v2/") == 2


# -- containerd -----------------------------------------------------------------------------
class _RecordingMirror:
    """A pass-through mirror that records what containerd sends (method, path?query, headers)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

            def do_GET(self) -> None:  # noqa: N802
                mirror.requests.append((self.command, self.path, dict(self.headers.items())))
                up = http.client.HTTPConnection(mirror.upstream, timeout=10)
                fwd = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                up.request(self.command, self.path.split("?")[0], headers=fwd)
                resp = up.getresponse()
                body = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("connection", "transfer-encoding"):
                        self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_HEAD = do_GET  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_containerd_pulls_directly(tmp_path: Path, containerd: Containerd, small_image: images.Image) -> None:
    with Registry(tmp_path / "reg") as reg:
        images.push(small_image, f"{reg.host}/peers/direct:v1")
        ref = f"{reg.host}/peers/direct:v1"
        t0 = time.monotonic()
        containerd.pull(ref)  # loopback origin: containerd 1.6 uses plain HTTP by itself
        elapsed = time.monotonic() - t0
        assert ref in containerd.images()
        assert set(small_image.blob_digests) <= set(containerd.content())
        assert reg.blob_get_count(small_image.layer_digests[1]) == 1
        assert elapsed < 30

        containerd.remove_all_content()
        assert containerd.images() == [] and containerd.content() == []
        containerd.pull(ref, plain_http=True)
        assert reg.blob_get_count(small_image.layer_digests[1]) == 2
        containerd.remove_all_content()

        bad = containerd.pull(f"{reg.host}/peers/direct:missing", check=False, timeout=30)
        assert bad.returncode != 0 and "not found" in bad.stderr


def test_containerd_mirror_requests(tmp_path: Path, containerd: Containerd, small_image: images.Image) -> None:
    """Pins down what containerd 1.6 sends to a mirror named in _default/hosts.toml."""
    with Registry(tmp_path / "reg") as reg:
        images.push(small_image, f"{reg.host}/peers/mirrored:v1")
        mirror = _RecordingMirror(reg.host)
        try:
            hosts = containerd.hosts_dir(mirror.url)
            containerd.pull(f"{reg.host}/peers/mirrored:v1", hosts_dir=hosts)
        finally:
            mirror.close()
            containerd.remove_all_content()
        ns = urllib.parse.quote(reg.host, safe="")
        seen = [(m, p) for m, p, _ in mirror.requests]
        assert seen[0] == ("HEAD", f"/v2/peers/mirrored/manifests/v1?ns={ns}")
        assert seen[1] == (
            "GET",
            f"/v2/peers/mirrored/manifests/{small_image.manifest_digest}?ns={ns}",
        )
        blob_paths = {p for m, p in seen[2:] if m == "GET"}
        assert blob_paths == {f"/v2/peers/mirrored/blobs/{d}?ns={ns}" for d in small_image.blob_digests}
        head_accept = mirror.requests[0][2]["Accept"]
        for mt in (images.MANIFEST_MEDIA_TYPE, images.INDEX_MEDIA_TYPE):
            assert mt in head_accept
        assert all("Range" not in h for _, _, h in mirror.requests)
        assert all(h["User-Agent"].startswith("containerd/") for _, _, h in mirror.requests)
        # nothing reached the origin directly: each origin hit is one the mirror forwarded
        from_containerd = [e for e in reg.requests() if e.user_agent.startswith("containerd/")]
        assert len(from_containerd) == len(mirror.requests)
        assert reg.blob_get_count(small_image.layer_digests[1]) == 1


def test_containerd_https_origin_with_hosts_ca(
    tmp_path: Path, containerd: Containerd, small_image: images.Image
) -> None:
    ca, cert, key = make_ca_and_cert(tmp_path / "pki")
    with Registry(tmp_path / "reg", tls=(cert, key)) as reg:
        images.push(small_image, f"{reg.host}/peers/tls:v1")
        hosts = containerd.hosts_dir(reg.url, host=reg.host, server=reg.url, ca=ca)
        containerd.pull(f"{reg.host}/peers/tls:v1", hosts_dir=hosts)
        assert reg.blob_get_count(small_image.layer_digests[1]) == 1
        containerd.remove_all_content()


def test_containerd_token_auth(tmp_path: Path, containerd: Containerd, small_image: images.Image) -> None:
    with (
        TokenServer(tmp_path / "token") as ts,
        Registry(tmp_path / "reg", token=ts.auth()) as reg,
    ):
        images.push(small_image, f"{reg.host}/peers/tok:v1", creds=(ts.user, ts.password))
        ts.reset()
        containerd.pull(f"{reg.host}/peers/tok:v1", user=f"{ts.user}:{ts.password}")
        containerd.remove_all_content()
        assert ts.issued >= 1
        # containerd 1.6 tries the OAuth2 POST first when it has a password
        assert ts.requests[0].method == "POST"
        assert ts.requests[0].form["grant_type"] == ["password"]


def test_wait_for_http_times_out_fast() -> None:
    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        wait_for_http(f"http://127.0.0.1:{port}/", timeout=0.3)
    assert time.monotonic() - t0 < 2


def test_seaweed_starts_again_on_new_ports_when_one_was_taken_meanwhile(tmp_path: Path) -> None:
    """The ports are picked free before weed binds them; a process that takes one in between
    must not fail the test that wanted an S3 (it did once in a fresh-clone run)."""
    import socket

    s3 = SeaweedS3(tmp_path / "weed")
    taken = s3.ports["volume.port"]
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        with s3:
            assert s3.ports["volume.port"] != taken
            assert s3.client().list_buckets()["Buckets"] == []
