"""The origin registries the systems pull from: plain HTTP, and HTTPS with a CA made for the run.

Each kind is its own docker-registry with the same images pushed to it, so one run measures
every system against both, interleaved. The HTTPS one presents a certificate for 127.0.0.1 and
localhost signed by a throwaway CA (tests/peers/tls.py); every system is told to trust that CA
in its own way, none skips verification.
"""

from __future__ import annotations

import shutil
import ssl
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from tests.peers.images import Image, push
from tests.peers.registry import Registry
from tests.peers.tls import make_ca_and_cert

PLAIN, TLS = "plain", "tls"
KINDS = (PLAIN, TLS)


@dataclass
class Upstream:
    """One origin: ours (access log readable) or an existing one (--upstream URL, plain only)."""

    kind: str
    url: str
    registry: Registry | None = None
    #: PEM file that verifies the upstream's certificate; None for plain HTTP
    ca: Path | None = None
    #: a directory holding ca.crt, the form skopeo's --dest-cert-dir wants
    cert_dir: Path | None = None
    #: a client context that verifies this upstream against the run's CA; None for plain HTTP
    client_tls: ssl.SSLContext | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        if self.ca is not None:
            self.client_tls = ssl.create_default_context(cafile=str(self.ca))

    @property
    def host(self) -> str:
        return self.url.split("://", 1)[1].rstrip("/")

    @property
    def port(self) -> int:
        return int(self.host.rsplit(":", 1)[1]) if ":" in self.host else (443 if self.ca else 80)

    def push(self, image: Image, ref: str) -> None:
        """Push `image` as `ref` (repo:tag) here, verifying the certificate when there is one."""
        push(image, f"{self.host}/{ref}", tls_verify=self.ca is not None, cert_dir=self.cert_dir)

    def mark(self) -> int | None:
        """A position in the access log; None when the log is not ours to read."""
        return None if self.registry is None else len(self.registry.requests())

    def blob_gets_since(self, mark: int | None, digests: Collection[str]) -> tuple[int, int] | None:
        """(successful GETs, bytes sent) of the blobs `digests` logged since `mark`."""
        if mark is None or self.registry is None:
            return None
        suffixes = tuple(f"/blobs/{d}" for d in digests)
        gets = [
            e
            for e in self.registry.requests()[mark:]
            if e.method == "GET" and e.path.endswith(suffixes) and 200 <= e.status < 300
        ]
        return len(gets), sum(e.size for e in gets)

    def close(self) -> None:
        if self.registry is not None:
            self.registry.close()


def start_upstreams(kinds: Collection[str], workdir: Path, existing: str | None) -> list[Upstream]:
    """The upstreams of `kinds`, started (the caller closes them, also when this raises).

    `existing` (an http:// URL) replaces our plain registry; the HTTPS one is always ours.
    """
    upstreams: list[Upstream] = []
    try:
        for kind in KINDS:
            if kind not in kinds:
                continue
            if kind == PLAIN and existing:
                upstreams.append(Upstream(PLAIN, existing.rstrip("/")))
                continue
            if kind == PLAIN:
                registry = Registry(workdir / "upstream-plain")
                upstreams.append(Upstream(PLAIN, registry.url, registry))
                registry.start()
                continue
            ca, cert, key = make_ca_and_cert(workdir / "tls")
            cert_dir = workdir / "tls" / "skopeo"
            cert_dir.mkdir()
            shutil.copy(ca, cert_dir / "ca.crt")
            registry = Registry(workdir / "upstream-tls", tls=(cert, key))
            upstreams.append(Upstream(TLS, registry.url, registry, ca, cert_dir))
            registry.start()
    except BaseException:
        for upstream in upstreams:
            upstream.close()
        raise
    return upstreams
