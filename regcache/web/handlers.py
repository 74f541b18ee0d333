"""Request handlers: parse once at the edge, ask the cache, stream the answer.

Services arrive through `initialize(**kwargs)` from the one route table in app.py. Bodies are
written one chunk at a time with `await flush()` between chunks (Tornado's StaticFileHandler
pattern), so a slow client holds one chunk of memory, never the object; a stored file on local
disk goes out with `os.sendfile` and holds none.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from datetime import timedelta
from typing import Any, Protocol, runtime_checkable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from tornado import gen
from tornado.iostream import IOStream, StreamClosedError
from tornado.web import HTTPError, RequestHandler

from regcache import metrics
from regcache.cache.blobs import BlobService, FillingBlob, PassedThrough, RedirectedBlob, SharedBlob, StoredBlob
from regcache.cache.context import ClientContext
from regcache.cache.manifests import Manifest, ManifestService, upstream_unavailable
from regcache.cache.relay import STORAGE_HEALTH, Relay
from regcache.config import DOCKER_HUB
from regcache.errors import BadRequest, RegcacheError
from regcache.oci import mediatypes
from regcache.oci.digest import Digest
from regcache.oci.reference import parse_blob_ref, parse_manifest_ref, parse_registry
from regcache.storage.base import ObjectReader
from regcache.upstream.client import UpstreamResponse
from regcache.web.errors import error_body, error_for
from regcache.web.ranges import ByteRange, Unsatisfiable, parse_range

log = logging.getLogger(__name__)
access_log = logging.getLogger("regcache.access")

CHUNK = 1 << 20
QUIET_PATHS = frozenset(("/healthz", "/readyz", "/metrics"))
API_VERSION = ("Docker-Distribution-Api-Version", "registry/2.0")


@runtime_checkable
class SupportsFileno(Protocol):
    """A stored object that is a local file (the disk tier's reader): it can be sendfile'd."""

    def fileno(self) -> int: ...


class BaseHandler(RequestHandler):
    """JSON errors in the OCI format, the request counters and the request log's fields."""

    kind = "other"

    def initialize(self, **services: Any) -> None:
        self.services = services
        self.cache_result = "-"
        self.registry = "-"
        self.body_bytes = 0
        self.aborted = False
        self.tracked = False

    def prepare(self) -> None:
        tracker = self.services.get("tracker")
        if tracker is not None:
            tracker.started()
            self.tracked = True
        if log.isEnabledFor(logging.DEBUG):
            shown = {
                k: ("<redacted>" if k.lower() in ("authorization", "cookie") else v)
                for k, v in self.request.headers.get_all()
            }
            log.debug("%s %s headers %s", self.request.method, self.request.path, shown)

    def on_finish(self) -> None:
        # Requests refused before prepare() (bad method, undecodable path) were never counted.
        tracker = self.services.get("tracker")
        if tracker is not None and self.tracked:
            tracker.finished()
        metrics.REQUESTS.labels(self.kind, self.request.method, str(self.get_status())).inc()

    def set_default_headers(self) -> None:
        self.set_header(*API_VERSION)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        status, code, message = error_for(exc, status_code)
        if status != status_code:
            self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(error_body(code, message))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        # Expected failures are one WARNING at most (already logged where they happened).
        if isinstance(value, (RegcacheError, HTTPError)):
            return
        super().log_exception(typ, value, tb)

    def finish(self, chunk: Any = None) -> Any:
        if isinstance(chunk, bytes) and not self.body_bytes:
            self.body_bytes = len(chunk)
        return super().finish(chunk)

    def fail(self, status: int, code: str, message: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(error_body(code, message))

    # --- the parts of a request that matter below the web layer ---------------------------------
    def origin_registry(self) -> str:
        ns = self.get_query_argument("ns", None)
        if ns is None:
            # Docker's registry-mirrors only ever mirror Docker Hub and send no ns.
            if not self.request.headers.get("User-Agent", "").startswith("docker/"):
                raise BadRequest(
                    "UNSUPPORTED",
                    "missing ns query argument: configure containerd to use regcache as a mirror (hosts.toml), which sends ?ns=<registry>",
                )
            self.registry = DOCKER_HUB
        else:
            self.registry = parse_registry(ns)
        guard = self.services.get("guard")
        if guard is not None:
            guard.check_registry(self.registry)  # --allow-registry, IP literals: 403
        return self.registry

    def client_context(self) -> ClientContext:
        return ClientContext(
            method=self.request.method or "GET",
            authorization=self.request.headers.get("Authorization"),
            accept=tuple(self.request.headers.get_list("Accept")),
        )

    # --- writing bodies -------------------------------------------------------------------------
    async def send_chunk(self, chunk: bytes) -> bool:
        """Write and flush one chunk; False when the client has gone.

        A client that takes no byte for --client-idle-timeout is disconnected: a reader that
        stalls for ever must not hold a connection, a descriptor and a download's reader slot.
        A slow one that keeps taking bytes is not.
        """
        self.write(chunk)
        flushed = self.flush()
        timeout = self.services.get("client_idle_timeout")
        stream = self.request.connection.stream
        sent = getattr(stream, "_total_write_done_index", None)
        while True:
            try:
                if timeout:
                    await gen.with_timeout(timedelta(seconds=timeout), flushed, quiet_exceptions=StreamClosedError)
                else:
                    await flushed
                break
            except StreamClosedError:
                return False
            except gen.TimeoutError:
                now_sent = getattr(stream, "_total_write_done_index", None)
                if now_sent is None or now_sent == sent:
                    log.info(
                        "%s %s: client took no byte for %.0fs; closing", self.request.method, self.request.path, timeout
                    )
                    self.abort_connection()
                    return False
                sent = now_sent
        self.body_bytes += len(chunk)
        return True

    def abort_connection(self) -> None:
        """End a response that cannot be completed truthfully: the client sees a broken stream."""
        self.aborted = True
        self.request.connection.stream.close()

    def pass_through(self, response: UpstreamResponse, include_body: bool) -> None:
        """The upstream's answer, unchanged but for hop-by-hop headers.

        Except a 429 or 5xx: containerd retries a 429 on the same host (up to 5 times) and
        would wait on the mirror, while a 503 sends it to the next host, the registry itself.
        The registry's Retry-After goes in the error body, not in a header a client would obey.
        """
        if upstream_unavailable(response.status):
            self.unavailable(response)
            return
        self.set_status(response.status)
        self.clear_header("Content-Type")
        seen: set[str] = set()
        for name, value in response.forwardable_headers():
            if name.lower() in seen:
                self.add_header(name, value)
            else:
                seen.add(name.lower())
                self.set_header(name, value)
        if include_body:
            self.body_bytes = len(response.body)
            metrics.SERVED_BYTES.labels("upstream").inc(len(response.body))
            self.finish(response.body)
        else:
            length = response.headers.get("Content-Length")
            if length is not None:
                self.set_header("Content-Length", length)
            self.finish()

    def unavailable(self, response: UpstreamResponse) -> None:
        retry_after = response.headers.get("Retry-After")
        detail: dict[str, object] = {"upstream_status": response.status}
        message = f"upstream {self.registry} answered {response.status}"
        if retry_after:
            detail["retry_after"] = retry_after[:100]
            message += f" (Retry-After: {retry_after[:100]})"
        self.set_status(503)
        self.set_header("Content-Type", "application/json")
        self.finish(error_body("UNAVAILABLE", message + "; fetch from the registry itself", detail))


class PingHandler(BaseHandler):
    async def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(b"{}")

    async def head(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Content-Length", "2")
        self.finish()


class ManifestHandler(BaseHandler):
    kind = "manifest"

    async def get(self, repo: str, reference: str, include_body: bool = True) -> None:
        ref = parse_manifest_ref(self.origin_registry(), repo, reference)
        manifests: ManifestService = self.services["manifests"]
        answer = await manifests.get(ref, self.client_context())
        self.cache_result = answer.result
        metrics.CACHE_RESULTS.labels(answer.result).inc()
        if answer.passed_through is not None:
            self.pass_through(answer.passed_through, include_body)
            return
        assert answer.manifest is not None
        self._send_manifest(answer.manifest, include_body, answer.result == "hit")

    async def head(self, repo: str, reference: str) -> None:
        await self.get(repo, reference, include_body=False)

    def _send_manifest(self, manifest: Manifest, include_body: bool, hit: bool) -> None:
        self.set_header("Content-Type", manifest.media_type)
        self.set_header("Docker-Content-Digest", str(manifest.digest))
        self.set_header("Etag", f'"{manifest.digest}"')
        self.set_header("Content-Length", str(len(manifest.body)))
        if include_body:
            self.body_bytes = len(manifest.body)
            metrics.SERVED_BYTES.labels("disk" if hit else "upstream").inc(len(manifest.body))
            self.write(manifest.body)
        self.finish()


class BlobHandler(BaseHandler):
    kind = "blob"
    _sending: asyncio.Future[int] | None = None  # a sendfile in progress

    async def get(self, repo: str, digest: str, include_body: bool = True) -> None:
        ref = parse_blob_ref(self.origin_registry(), repo, digest)
        blobs: BlobService = self.services["blobs"]
        answer = await blobs.open(ref, self.client_context())
        if isinstance(answer, StoredBlob):
            self.cache_result = "hit"
            metrics.CACHE_RESULTS.labels("hit").inc()
            try:
                await self._send_stored(answer.reader, ref.digest, include_body)
            finally:
                answer.reader.close()
        elif isinstance(answer, FillingBlob):
            try:
                await self._send_filling(answer, ref.digest)
            finally:
                answer.fill.detach(answer.fd)
        elif isinstance(answer, SharedBlob):
            self.cache_result = "hit"
            metrics.CACHE_RESULTS.labels("hit").inc()
            self._blob_headers(ref.digest)
            self.set_header("Content-Length", str(answer.size))
        elif isinstance(answer, RedirectedBlob):
            # Straight from S3 (presigned, short-lived): large layers skip this process.
            self.cache_result = "hit"
            metrics.CACHE_RESULTS.labels("hit").inc()
            self.set_status(307)
            self.set_header("Location", answer.url)
            self.set_header("Docker-Content-Digest", str(ref.digest))
            self.set_header("Content-Length", "0")
        elif isinstance(answer, Relay):
            try:
                await self._send_relayed(answer, ref.digest)
            finally:
                answer.close()
        else:
            self._send_passed_through(answer, ref.digest)

    async def head(self, repo: str, digest: str) -> None:
        await self.get(repo, digest, include_body=False)

    def _blob_headers(self, digest: Digest) -> None:
        self.set_header("Content-Type", mediatypes.OCTET_STREAM)
        self.set_header("Docker-Content-Digest", str(digest))
        self.set_header("Accept-Ranges", "bytes")

    def _select_range(self, size: int) -> ByteRange | None:
        """Status and length headers for the requested range; None after a 416 was sent."""
        spec = parse_range(self.request.headers.get("Range"))
        if spec is None:
            self.set_header("Content-Length", str(size))
            return ByteRange(0, size)
        try:
            byte_range = spec.resolve(size)
        except Unsatisfiable:
            self.set_header("Content-Range", f"bytes */{size}")
            self.fail(
                416, "RANGE_INVALID", f"range {self.request.headers.get('Range')!r} not satisfiable for {size} bytes"
            )
            return None
        self.set_status(206)
        self.set_header("Content-Range", byte_range.content_range(size))
        self.set_header("Content-Length", str(byte_range.length))
        return byte_range

    async def _send_stored(self, reader: ObjectReader, digest: Digest, include_body: bool) -> None:
        self._blob_headers(digest)
        byte_range = self._select_range(reader.size)
        if byte_range is None or not include_body:
            return
        if (
            isinstance(reader, SupportsFileno)
            and byte_range.length
            and type(self.request.connection.stream) is IOStream
        ):
            await self._sendfile(reader, byte_range)
            return
        position = byte_range.start
        while position < byte_range.end:
            try:
                chunk = reader.read(position, min(CHUNK, byte_range.end - position))
            except OSError:
                chunk = b""
            if not chunk:
                # The file shrank under us (removed from outside): never finish as if complete.
                self.abort_connection()
                return
            if not await self.send_chunk(chunk):
                return
            metrics.SERVED_BYTES.labels("disk").inc(len(chunk))
            position += len(chunk)

    async def _sendfile(self, reader: SupportsFileno, byte_range: ByteRange) -> None:
        """A file on local disk goes from the page cache to the client's socket in the kernel
        (`os.sendfile`, via the event loop's sock_sendfile): no copy through Python, no chunk in
        memory, a fraction of the CPU of read + write.

        The body bypasses Tornado's stream, so the headers are flushed first, and the
        connection's Content-Length bookkeeping is told what was sent behind its back. A client
        that goes away ends the transfer (on_connection_close cancels it); a file that shrank
        under us ends the connection without a complete-looking body. sock_sendfile moves the
        descriptor's file offset: harmless for a reader's own descriptor read with pread, but
        never give it one that shares its offset with a writer (a dup of a staging file).
        """
        try:
            await self.flush()
        except StreamClosedError:
            return
        stream = self.request.connection.stream
        # The loop watches the socket for writability under its descriptor number. Tornado
        # closes its own descriptor when the client leaves, and a new connection may get the
        # same number before our cancellation unregisters it; so the transfer runs on a
        # duplicate that only we close, once nothing watches it any more.
        sock = stream.socket.dup()
        try:
            idle = self.services.get("client_idle_timeout")
            sending = asyncio.ensure_future(
                _sendfile(sock, reader.fileno(), byte_range.start, byte_range.length, idle if idle else None)
            )
            self._sending = sending
            try:
                await asyncio.wait([sending])
            finally:
                self._sending = None
                if not sending.done():  # this handler was cancelled: stop the transfer first
                    sending.cancel()
                    await asyncio.wait([sending])
        finally:
            sock.close()
        if sending.cancelled():
            return  # the client went away
        if sending.exception() is not None:
            # Broken pipe, reset, a socket closed under us, or a client that took no byte for
            # --client-idle-timeout.
            if isinstance(sending.exception(), TimeoutError):
                log.info("%s %s: client took no byte for %.0fs; closing", self.request.method, self.request.path, idle)
            if not stream.closed():
                self.abort_connection()
            return
        sent = sending.result()
        self.body_bytes += sent
        metrics.SERVED_BYTES.labels("disk").inc(sent)
        connection = self.request.connection
        remaining = getattr(connection, "_expected_content_remaining", None)
        if remaining is not None:
            connection._expected_content_remaining = remaining - sent
        if sent < byte_range.length:
            # The file shrank under us (removed from outside): never finish as if complete.
            self.abort_connection()

    def on_connection_close(self) -> None:
        if self._sending is not None:
            self._sending.cancel()
        super().on_connection_close()

    async def _send_filling(self, answer: FillingBlob, digest: Digest) -> None:
        fill, head = answer.fill, answer.head
        # A reader that joins a download already verified reads cached bytes: a hit; so does one
        # reading a copy from S3.
        self.cache_result = "hit" if answer.hit or answer.source == "s3" else "miss"
        metrics.CACHE_RESULTS.labels(self.cache_result).inc()
        self._blob_headers(digest)
        end: int | None = None
        position = 0
        if head.size is not None:
            byte_range = self._select_range(head.size)
            if byte_range is None:
                return
            position, end = byte_range.start, byte_range.end
        # Headers go out now, before the body: containerd gives up on a mirror whose headers lag.
        try:
            await self.flush()
        except StreamClosedError:
            return
        while end is None or position < end:
            try:
                limit = await fill.readable(position, end)
            except RegcacheError:
                self.abort_connection()
                return
            if end is not None:
                limit = min(limit, end)
            if limit <= position:
                break
            try:
                chunk = os.pread(answer.fd, min(CHUNK, limit - position), position)
            except OSError:
                chunk = b""
            if not chunk:
                self.abort_connection()
                return
            if not await self.send_chunk(chunk):
                return
            metrics.SERVED_BYTES.labels("disk" if answer.hit else answer.source).inc(len(chunk))
            position += len(chunk)

    async def _send_relayed(self, relay: Relay, digest: Digest) -> None:
        """A download the cache could not store, streamed through as it arrives (whole: a Range
        is not honoured here, which RFC 9110 allows)."""
        self.cache_result = "skip"
        metrics.CACHE_RESULTS.labels("skip").inc()
        self._blob_headers(digest)
        if relay.size is not None:
            self.set_header("Content-Length", str(relay.size))
        try:
            await self.flush()
        except StreamClosedError:
            return
        while True:
            try:
                chunk = await relay.read()
            except RegcacheError:
                self.abort_connection()
                return
            if chunk is None:
                return
            if not await self.send_chunk(chunk):
                return
            metrics.SERVED_BYTES.labels("upstream").inc(len(chunk))

    def _send_passed_through(self, answer: PassedThrough, digest: Digest) -> None:
        self.cache_result = "skip"
        metrics.CACHE_RESULTS.labels("skip").inc()
        response = answer.response
        if 200 <= response.status < 300:
            # A HEAD answered by a CDN after a redirect may lack these; containerd needs the digest.
            response.headers["Docker-Content-Digest"] = str(digest)
            response.headers.setdefault("Accept-Ranges", "bytes")
        self.pass_through(response, include_body=self.request.method != "HEAD")


class MetricsHandler(BaseHandler):
    async def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest())


class HealthHandler(BaseHandler):
    async def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(b'{"status":"ok"}')


class ReadyHandler(BaseHandler):
    async def get(self) -> None:
        disk = self.services["disk"]
        self.set_header("Content-Type", "application/json")
        trouble = STORAGE_HEALTH.trouble()
        if not disk.writable():
            self.set_status(503)
            self.finish(
                error_body("UNAVAILABLE", f"cache dir {disk.root} is not writable; pulls pass through uncached")
            )
        elif trouble is not None:
            # Recent failures (a full disk still takes an empty probe file): reported for a minute.
            self.set_status(503)
            self.finish(error_body("UNAVAILABLE", f"cache storage failing: {trouble}; pulls pass through uncached"))
        else:
            self.finish(b'{"status":"ready"}')


class UploadHandler(BaseHandler):
    """Pushes: refused with the pull-only message whatever the method."""

    def prepare(self) -> None:
        super().prepare()
        raise HTTPError(405)


class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:
        super().prepare()
        raise HTTPError(404, "no such endpoint: %s", self.request.path)


def log_request(handler: RequestHandler) -> None:
    """One INFO line per request: what, for which registry, how it ended, from where it came."""
    status = handler.get_status()
    duration = 1000.0 * handler.request.request_time()
    fields = getattr(handler, "registry", "-"), getattr(handler, "cache_result", "-"), getattr(handler, "body_bytes", 0)
    if status < 500:
        # Probes and scrapes come every few seconds; they are not what an operator reads logs for.
        level = logging.DEBUG if handler.request.path in QUIET_PATHS else logging.INFO
    else:
        level = logging.WARNING
    access_log.log(
        level,
        "%s %s ns=%s status=%d%s bytes=%d cache=%s %.1fms",
        handler.request.method,
        handler.request.path,
        fields[0],
        status,
        " (aborted)" if getattr(handler, "aborted", False) else "",
        fields[2],
        fields[1],
        duration,
    )


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def _sendfile(sock: socket.socket, fd: int, offset: int, count: int, idle: float | None) -> int:
    """`os.sendfile` from `fd` at an explicit offset (the descriptor's own offset is never
    moved, so it may be shared) to a non-blocking socket; returns the bytes sent (fewer when
    the file ended early). TimeoutError when the client takes no byte for `idle` seconds."""
    loop = asyncio.get_running_loop()
    target = sock.fileno()
    sent = 0
    while sent < count:
        try:
            done = os.sendfile(target, fd, offset + sent, count - sent)
        except BlockingIOError:
            writable: asyncio.Future[None] = loop.create_future()
            loop.add_writer(target, _wake, writable)
            try:
                await asyncio.wait_for(writable, idle)
            finally:
                loop.remove_writer(target)
            continue
        if done == 0:
            break  # the file is shorter than it was
        sent += done
    return sent
