"""A Docker token-auth server (the registry's `realm`) that distribution 2.8 accepts.

It records every request, headers and form included, so tests can check that regcache
fetched a token once and sent credentials only to the realm.
"""

from __future__ import annotations

import base64
import datetime
import functools
import json
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from tests.peers.binaries import Peer
from tests.peers.registry import TokenAuth


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@functools.cache
def _signing_identity(issuer: str) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """An RSA key and self-signed cert per issuer, made once per process (RSA keygen is slow)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return key, cert


@dataclass
class TokenRequest:
    """One request the token server saw."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    form: dict[str, list[str]] = field(default_factory=dict)
    status: int = 0

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")


class TokenServer(Peer):
    """Issues RS256 JWTs with an x5c header at http://127.0.0.1:<port>/token.

    GET /token?service=S&scope=repository:NAME:pull[,push] with Basic user:password gets a
    token for the requested actions; no or wrong credentials get 401 unless
    `anonymous_pull`, which grants pull only. POST /token (OAuth2 password grant, what
    containerd tries first) is served too unless `oauth_post=False` (then 404, like GCR).
    """

    def __init__(
        self,
        workdir: Path | str,
        *,
        user: str = "alice",
        password: str = "secret",
        service: str = "regcache-test-registry",
        issuer: str = "regcache-test-issuer",
        expires_in: int = 300,
        anonymous_pull: bool = False,
        oauth_post: bool = True,
    ) -> None:
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.user, self.password = user, password
        self.service, self.issuer = service, issuer
        self.expires_in = expires_in
        self.anonymous_pull = anonymous_pull
        self.oauth_post = oauth_post
        self._key, self._cert = _signing_identity(issuer)
        self.cert_path = self.dir / "token-root.pem"
        self.cert_path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        self.issued = 0
        self.requests: list[TokenRequest] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> TokenServer:
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler_for(self))
        server.daemon_threads = True
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="tokenserver", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- what the registry needs ----------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def realm(self) -> str:
        return f"{self.url}/token"

    def auth(self) -> TokenAuth:
        """The `auth: token` settings for Registry(token=...)."""
        return TokenAuth(
            realm=self.realm,
            service=self.service,
            issuer=self.issuer,
            rootcertbundle_path=self.cert_path,
        )

    def reset(self) -> None:
        """Forget recorded requests and the issued count."""
        with self._lock:
            self.requests.clear()
            self.issued = 0

    # -- tokens ---------------------------------------------------------------------------
    def make_token(self, subject: str, access: list[dict[str, object]], service: str) -> str:
        """A signed JWT distribution verifies against cert_path (also usable directly)."""
        now = int(time.time())
        header = {
            "typ": "JWT",
            "alg": "RS256",
            "x5c": [base64.b64encode(self._cert.public_bytes(serialization.Encoding.DER)).decode()],
        }
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": service,
            "exp": now + self.expires_in,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = (
            _b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        sig = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + _b64url(sig)

    def _grant(self, scopes: list[str], authenticated: bool) -> list[dict[str, object]]:
        access: list[dict[str, object]] = []
        for scope in scopes:
            for one in scope.split(" "):
                parts = one.split(":")
                if len(parts) < 3:
                    continue
                rtype, actions = parts[0], parts[-1].split(",")
                name = ":".join(parts[1:-1])
                if not authenticated:
                    actions = [a for a in actions if a == "pull"]
                if actions:
                    access.append({"type": rtype, "name": name, "actions": actions})
        return access

    def _check_basic(self, header: str | None) -> bool | None:
        """True: right credentials; False: wrong ones; None: none given."""
        if not header or not header.lower().startswith("basic "):
            return None
        try:
            user, _, pw = base64.b64decode(header[6:].strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return user == self.user and pw == self.password

    def _issue(self, subject: str, scopes: list[str], service: str, authed: bool) -> dict:
        token = self.make_token(subject, self._grant(scopes, authed), service)
        with self._lock:
            self.issued += 1
        return {
            "token": token,
            "access_token": token,
            "expires_in": self.expires_in,
            "issued_at": datetime.datetime.now(datetime.UTC).isoformat(),
        }


def _handler_for(ts: TokenServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            with (ts.dir / "tokenserver.log").open("a") as f:
                f.write(f"{self.address_string()} {format % args}\n")

        def _record(self, form: dict[str, list[str]] | None = None) -> TokenRequest:
            parsed = urllib.parse.urlsplit(self.path)
            rec = TokenRequest(
                method=self.command,
                path=parsed.path,
                query=urllib.parse.parse_qs(parsed.query),
                headers={k.lower(): v for k, v in self.headers.items()},
                form=form or {},
            )
            with ts._lock:
                ts.requests.append(rec)
            return rec

        def _send(self, rec: TokenRequest, status: int, body: dict, extra: dict | None = None) -> None:
            rec.status = status
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _unauthorized(self, rec: TokenRequest) -> None:
            self._send(
                rec,
                401,
                {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                {"WWW-Authenticate": 'Basic realm="regcache-test-token"'},
            )

        def do_GET(self) -> None:  # noqa: N802
            rec = self._record()
            if rec.path != "/token":
                return self._send(rec, 404, {"error": "not found"})
            ok = ts._check_basic(self.headers.get("Authorization"))
            if ok is False or (ok is None and not ts.anonymous_pull):
                return self._unauthorized(rec)
            service = rec.query.get("service", [ts.service])[0]
            body = ts._issue(ts.user if ok else "", rec.query.get("scope", []), service, bool(ok))
            self._send(rec, 200, body)

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode() if length else ""
            rec = self._record(urllib.parse.parse_qs(raw))
            if rec.path != "/token" or not ts.oauth_post:
                return self._send(rec, 404, {"error": "not found"})
            form = rec.form
            grant = form.get("grant_type", [""])[0]
            authed: bool | None = None
            if grant == "password":
                authed = form.get("username", [""])[0] == ts.user and form.get("password", [""])[0] == ts.password
            if not authed:
                return self._unauthorized(rec)
            service = form.get("service", [ts.service])[0]
            scopes = form.get("scope", [])
            body = ts._issue(ts.user, scopes, service, True)
            body["scope"] = " ".join(scopes)
            self._send(rec, 200, body)

    return Handler
