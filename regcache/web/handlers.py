"""Request handlers: parse once at the edge, ask the cache, send the answer.

Services arrive as one typed value through `initialize` from the one route table in app.py.
Bodies go out through web/streaming.py's one loop.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from tornado.web import HTTPError

from regcache import metrics
from regcache.cache.blobs import Body, Redirect, UpstreamAnswer
from regcache.cache.context import ClientContext
from regcache.cache.manifests import upstream_unavailable
from regcache.cache.ranges import ByteRange, RangeSpec, Unsatisfiable, honoured_range
from regcache.errors import RegcacheError
from regcache.oci import mediatypes
from regcache.oci.reference import parse_blob_ref, parse_manifest_ref
from regcache.upstream.client import UpstreamResponse
from regcache.web.errors import error_body, error_for
from regcache.web.routing import Route, route
from regcache.web.services import Services
from regcache.web.streaming import BodyWriter

log = logging.getLogger(__name__)
access_log = logging.getLogger("regcache.access")

QUIET_PATHS = frozenset(("/healthz", "/readyz", "/metrics"))
API_VERSION = ("Docker-Distribution-Api-Version", "registry/2.0")
# distribution-spec "Registry Proxying": a registry that scopes requests by ns SHOULD return it.
NAMESPACE_HEADER = "OCI-Namespace"
# hit, miss or skip, as counted in containerd_cache_total: `regcache prefetch` reports it.
CACHE_RESULT_HEADER = "X-Regcache-Cache"


class BaseHandler(BodyWriter):
    """JSON errors in the OCI format, the request counters and the request log's fields."""

    kind = "other"
    namespace: str | None = None  # the registry a client scoped its request to, once routed

    def initialize(self, services: Services) -> None:
        self.services = services
        self.idle_timeout = services.client_idle_timeout
        self.cache_result = "-"
        self.registry = "-"
        self.tracked = False

    def prepare(self) -> None:
        self.services.tracker.started()
        self.tracked = True
        if log.isEnabledFor(logging.DEBUG):
            shown = {
                k: ("<redacted>" if k.lower() in ("authorization", "cookie") else v)
                for k, v in self.request.headers.get_all()
            }
            log.debug("%s %s headers %s", self.request.method, self.request.path, shown)

    def on_finish(self) -> None:
        # Requests refused before prepare() (bad method, undecodable path) were never counted.
        if self.tracked:
            self.services.tracker.finished()
        metrics.REQUESTS.labels(self.kind, self.request.method, str(self.get_status())).inc()

    def set_default_headers(self) -> None:
        # Also called when an error replaces the answer: the namespace stays on it.
        self.set_header(*API_VERSION)
        if self.namespace is not None:
            self.set_header(NAMESPACE_HEADER, self.namespace)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        self.fail(*error_for(exc, status_code))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        # Expected failures are one WARNING at most (already logged where they happened).
        if isinstance(value, (RegcacheError, HTTPError)):
            return
        super().log_exception(typ, value, tb)

    def finish(self, chunk: Any = None) -> Any:
        # A HEAD's body is never sent (Tornado drops it): the log line counts what went out.
        if isinstance(chunk, bytes) and not self.body_bytes and self.request.method != "HEAD":
            self.body_bytes = len(chunk)
        return super().finish(chunk)

    def count(self, result: str) -> None:
        """How the cache answered this request: the log line, the counter and a header."""
        self.cache_result = result
        metrics.CACHE_RESULTS.labels(result).inc()
        self.set_header(CACHE_RESULT_HEADER, result)

    def fail(self, status: int, code: str, message: str, detail: object = None) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(error_body(code, message, detail))

    # --- the parts of a request that matter below the web layer ---------------------------------
    def routed(self, name: str) -> Route:
        """The registry and repository a pull names (ns, the path, or Docker's mirror), checked
        by the guard. From here on every answer, errors included, carries OCI-Namespace."""
        found = route(
            name,
            self.get_query_argument("ns", None),
            self.request.headers.get("User-Agent", ""),
            self.services.upstream_names,
        )
        self.registry = found.registry
        self.namespace = found.namespace
        self.set_default_headers()  # now with the namespace
        self.services.guard.check_registry(found.registry)  # --allow-registry, IP literals: 403
        return found

    def client_context(self) -> ClientContext:
        return ClientContext(
            method=self.request.method or "GET",
            authorization=self.request.headers.get("Authorization"),
            accept=tuple(self.request.headers.get_list("Accept")),
        )

    # --- answers ------------------------------------------------------------------------------
    def pass_through(self, response: UpstreamResponse, include_body: bool, served_from: str = "upstream") -> None:
        """The upstream's answer, unchanged but for hop-by-hop headers.

        Except a 429 or 5xx: containerd retries a 429 on the same host (up to 5 times) and
        would wait on the mirror, while a 503 sends it to the next host, the registry itself.
        The registry's Retry-After goes in the error body, not in a header a client would obey.
        """
        if upstream_unavailable(response.status):
            retry_after = response.headers.get("Retry-After")
            detail: dict[str, object] = {"upstream_status": response.status}
            message = f"upstream {self.registry} answered {response.status}"
            if retry_after:
                detail["retry_after"] = retry_after[:100]
                message += f" (Retry-After: {retry_after[:100]})"
            self.fail(503, "UNAVAILABLE", message + "; fetch from the registry itself", detail)
            return
        self.set_status(response.status)
        self.clear_header("Content-Type")
        seen: set[str] = set()
        for name, value in response.forwardable_headers():
            if name.lower() == NAMESPACE_HEADER.lower():
                continue  # the namespace is ours to name (an upstream may be another proxy)
            if name.lower() in seen:
                self.add_header(name, value)
            else:
                seen.add(name.lower())
                self.set_header(name, value)
        if include_body:
            metrics.SERVED_BYTES.labels(served_from).inc(len(response.body))
            self.finish(response.body)
        else:
            length = response.headers.get("Content-Length")
            if length is not None:
                self.set_header("Content-Length", length)
            self.finish()


class PingHandler(BaseHandler):
    async def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(b"{}")  # a HEAD is told its Content-Length; Tornado sends no body

    head = get


class ManifestHandler(BaseHandler):
    kind = "manifest"

    async def get(self, name: str, reference: str) -> None:
        include_body = self.request.method != "HEAD"
        origin = self.routed(name)
        ref = parse_manifest_ref(origin.registry, origin.repo, reference)
        answer = await self.services.manifests.get(ref, self.client_context())
        self.count(answer.result)
        if answer.passed_through is not None:
            self.pass_through(answer.passed_through, include_body)
            return
        manifest = answer.manifest
        assert manifest is not None
        self.set_header("Content-Type", manifest.media_type)
        self.set_header("Docker-Content-Digest", str(manifest.digest))
        self.set_header("Etag", f'"{manifest.digest}"')
        self.set_header("Content-Length", str(len(manifest.body)))
        if include_body:
            metrics.SERVED_BYTES.labels("disk" if answer.result == "hit" else "upstream").inc(len(manifest.body))
        self.finish(manifest.body if include_body else None)

    head = get


class BlobHandler(BaseHandler):
    kind = "blob"

    async def get(self, name: str, digest: str) -> None:
        origin = self.routed(name)
        ref = parse_blob_ref(origin.registry, origin.repo, digest)
        headers = self.request.headers
        wanted = honoured_range(headers.get("Range"), headers.get("If-Range"), f'"{ref.digest}"')
        answer: Body | Redirect | UpstreamAnswer
        if self.request.method == "HEAD":
            answer = await self.services.blobs.head(ref, self.client_context())
        else:
            answer = await self.services.blobs.get(ref, self.client_context(), wanted)
        match answer:
            case Body():
                try:
                    await self._send_body(answer, wanted)
                finally:
                    await answer.aclose()
            case Redirect(url=url):
                # Straight from S3 (presigned, short-lived): large layers skip this process.
                self.count("hit")
                self.set_status(307)
                self.set_header("Location", url)
                self.set_header("Docker-Content-Digest", str(ref.digest))
                self.set_header("Content-Length", "0")
            case UpstreamAnswer(response=response):
                self.count("skip")
                if 200 <= response.status < 300:
                    # A HEAD answered by a CDN after a redirect may lack these; containerd needs the digest.
                    response.headers["Docker-Content-Digest"] = str(ref.digest)
                    response.headers.setdefault("Accept-Ranges", "bytes")
                self.pass_through(response, include_body=self.request.method != "HEAD")

    head = get

    async def _send_body(self, body: Body, wanted: RangeSpec | None) -> None:
        """Every source answers a range alike (stored, in flight, S3, a pass-through, a HEAD):
        containerd 2.1+ fetches a layer in parallel only when `bytes=0-` gets a 206."""
        self.count(body.result)
        self.set_header("Content-Type", mediatypes.OCTET_STREAM)
        self.set_header("Docker-Content-Digest", str(body.digest))
        self.set_header("Etag", f'"{body.digest}"')  # what an If-Range names
        self.set_header("Accept-Ranges", "bytes")
        start, end = 0, body.size
        if body.size is not None:
            byte_range = self._select_range(wanted, body.size)
            if byte_range is None:
                return  # 416 sent
            start, end = byte_range.start, byte_range.end
        if body.source is None or self.request.method == "HEAD" or start == end:
            return
        await self.send_source(body.source, start, end, body.served_from)

    def _select_range(self, spec: RangeSpec | None, size: int) -> ByteRange | None:
        """Status and length headers for the requested range; None after a 416 was sent."""
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
        disk = self.services.disk
        trouble = self.services.health.trouble()
        if not disk.writable():
            self.fail(503, "UNAVAILABLE", f"cache dir {disk.root} is not writable; pulls pass through uncached")
        elif trouble is not None:
            # Recent failures (a full disk still takes an empty probe file): reported for a minute.
            self.fail(503, "UNAVAILABLE", f"cache storage failing: {trouble}; pulls pass through uncached")
        else:
            self.set_header("Content-Type", "application/json")
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


def log_request(handler: BaseHandler) -> None:
    """One INFO line per request: what, for which registry, how it ended, from where it came."""
    status = handler.get_status()
    duration = 1000.0 * handler.request.request_time()
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
        handler.registry,
        status,
        " (aborted)" if handler.aborted else "",
        handler.body_bytes,
        handler.cache_result,
        duration,
    )
