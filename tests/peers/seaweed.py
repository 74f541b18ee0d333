"""SeaweedFS (`weed mini`) as a local S3 endpoint for regcache's S3 tier and for
distribution's s3 storage driver (which answers blob GETs with a 307 to a presigned URL)."""

from __future__ import annotations

import glob
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.peers.binaries import ManagedProcess, Peer, on_exit, require
from tests.peers.net import clean_env, free_port, wait_for_http
from tests.peers.registry import S3Storage

# Every listener `weed mini` opens (4.x): each gets a free port, so parallel tests and a
# developer's own instance never collide; grpc ports default to http+10000, which could
# exceed 65535 for a kernel-chosen port, so they are set too.
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


class SeaweedS3(Peer):
    """`weed mini` with only what S3 needs, on free loopback ports, static credentials."""

    def __init__(
        self,
        workdir: Path | str | None = None,
        *,
        access_key: str = "regcache-test-key",
        secret_key: str = "regcache-test-secret",
        region: str = "us-east-1",
    ) -> None:
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="regcache-weed-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.access_key, self.secret_key, self.region = access_key, secret_key, region
        self.ports = {flag: free_port() for flag in _PORT_FLAGS}
        self.log_path = self.dir / "weed.log"
        self._proc: ManagedProcess | None = None
        self._client: Any = None
        self.startup_seconds: float | None = None

    @property
    def port(self) -> int:
        return self.ports["s3.port"]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0, attempts: int = 3) -> SeaweedS3:
        """Start weed and wait until S3 accepts a signed request from these credentials.

        Its eight ports are picked free beforehand, so another process may take one before weed
        binds it: then weed dies saying so ("is not available" when its own check sees it, "address
        already in use" when its bind does), and it starts again on new ports.
        """
        for attempt in range(attempts):
            try:
                return self._start_once(timeout)
            except RuntimeError as e:
                taken = "address already in use" in str(e) or "is not available" in str(e)
                if attempt == attempts - 1 or not taken:
                    raise
                self.ports = {flag: free_port() for flag in _PORT_FLAGS}
                self._client = None  # it named the old S3 port
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float) -> SeaweedS3:
        weed = require("weed")
        t0 = time.monotonic()
        s3_config = self.dir / "s3.json"
        s3_config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "regcache-test",
                            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        data = self.dir / "data"
        data.mkdir(exist_ok=True)
        argv = [
            weed,
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.config={s3_config}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            f"-admin.dataDir={self.dir / 'admin'}",
            "-master.telemetry=false",  # never phone home
            f"-filer.localSocket={self.dir / 'filer.sock'}",
            f"-s3.localSocket={self.dir / 's3.sock'}",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
        ]
        # AWS_*/S3_* variables are read by weed (credentials, S3_BUCKET): keep them out.
        env = {k: v for k, v in clean_env().items() if not k.startswith(("AWS_", "S3_"))}
        proc = ManagedProcess(argv, log=self.log_path, env=env, cwd=self.dir)
        proc.start()
        self._proc = proc
        on_exit(self, self.close)
        try:
            wait_for_http(f"{self.endpoint}/", timeout, range(200, 600), alive=proc.alive)
            self._wait_signed(t0 + timeout)
        except (TimeoutError, RuntimeError) as e:
            err = proc.failure(f"weed mini did not start: {e}")
            self.stop()
            raise err from None
        self.startup_seconds = time.monotonic() - t0
        return self

    def _wait_signed(self, deadline: float) -> None:
        """The gateway answers before it can reach the filer; list_buckets proves both."""
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self._proc is not None
            if not self._proc.alive():
                raise RuntimeError("weed exited")
            try:
                self.client().list_buckets()
                return
            except Exception as e:  # noqa: BLE001 - any failure means "not yet"
                last = e
            time.sleep(0.05)
        raise TimeoutError(f"S3 never accepted our credentials: {last}")

    def client(self) -> Any:
        """A boto3 S3 client for this endpoint (path style, no proxy, no CA bundle)."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client(
                "s3",
                endpoint_url=self.endpoint,
                aws_access_key_id=self.access_key,
                aws_secret_access_key=self.secret_key,
                region_name=self.region,
                config=Config(
                    s3={"addressing_style": "path"},
                    proxies={},
                    retries={"max_attempts": 1},
                    connect_timeout=2,
                    read_timeout=30,
                ),
                verify=False,
            )
        return self._client

    def bucket(self, name: str) -> str:
        """Create bucket `name` (3-63 chars, lowercase) if missing; return the name."""
        s3 = self.client()
        try:
            s3.create_bucket(Bucket=name)
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass
        except s3.exceptions.BucketAlreadyExists:
            pass
        return name

    def storage(self, bucket: str, rootdirectory: str = "") -> S3Storage:
        """Registry(s3=...) settings for `bucket` (created if missing)."""
        return S3Storage(
            endpoint=self.endpoint,
            bucket=self.bucket(bucket),
            access_key=self.access_key,
            secret_key=self.secret_key,
            region=self.region,
            rootdirectory=rootdirectory,
        )

    def stop(self) -> None:
        """Kill weed at once (a graceful stop takes ~4 s; the data is throwaway)."""
        if self._proc is not None:
            self._proc.stop(grace=0.2)
            self._proc = None
            # gRPC unix sockets weed puts in /tmp named after our ports; not configurable.
            for port in self.ports.values():
                for stale in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
                    try:
                        os.unlink(stale)
                    except OSError:
                        pass
