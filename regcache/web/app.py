"""The one route table, and serving it: start-up, signals, graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal

from tornado.netutil import bind_sockets
from tornado.web import Application

from regcache import metrics
from regcache.cache.blobs import BlobService
from regcache.cache.fill import FillMap
from regcache.cache.lists import ListService
from regcache.cache.manifests import ManifestService
from regcache.cache.policy import Policy
from regcache.config import Settings
from regcache.errors import ConfigError
from regcache.storage.disk import DiskTier
from regcache.storage.health import StorageHealth
from regcache.storage.local_index import LocalIndex
from regcache.storage.s3 import S3Tier
from regcache.storage.staging import clear_staging
from regcache.storage.tiered import TieredStore
from regcache.upstream.client import UpstreamClient
from regcache.web.handlers import (
    BlobHandler,
    HealthHandler,
    ManifestHandler,
    MetricsHandler,
    NotFoundHandler,
    PingHandler,
    ReadyHandler,
    UploadHandler,
    log_request,
)
from regcache.web.lists import ReferrersHandler, TagListHandler
from regcache.web.plain_http import PlainHTTPServer
from regcache.web.services import RequestTracker, Services

log = logging.getLogger(__name__)

# Repository names may contain "/", so the name is everything before the last /manifests/ or /blobs/.
NAME = r"(.+?)"
SHUTDOWN_GRACE = 25.0
MAX_HEADER_SIZE = 64 * 1024


def make_app(services: Services) -> Application:
    args = {"services": services}
    routes = [
        (r"/v2/?", PingHandler, args),
        (rf"/v2/{NAME}/manifests/([^/]+)", ManifestHandler, args),
        (rf"/v2/{NAME}/blobs/uploads/?.*", UploadHandler, args),
        (rf"/v2/{NAME}/blobs/([^/]+)", BlobHandler, args),
        (rf"/v2/{NAME}/tags/list", TagListHandler, args),
        (rf"/v2/{NAME}/referrers/([^/]+)", ReferrersHandler, args),
        (r"/metrics", MetricsHandler, args),
        (r"/healthz", HealthHandler, args),
        (r"/readyz", ReadyHandler, args),
    ]
    return Application(
        routes,
        default_handler_class=NotFoundHandler,
        default_handler_args=args,
        log_function=log_request,
        compress_response=False,
    )


async def open_store(settings: Settings) -> TieredStore:
    """The local tier, and in S3 mode the checked bucket behind it; ConfigError if unusable."""
    root = settings.cache_dir
    metrics.watch_cache_volume(root)
    disk = DiskTier(root)
    leftovers = clear_staging(root)
    if leftovers:
        log.info("removed %d interrupted downloads from %s", leftovers, root / "staging")
    index = None
    if settings.local_cache_size is not None:
        index = LocalIndex(settings.local_cache_size)
        index.load(root)
        log.info("local tier: %d objects, %.1f of %.1f GiB", len(index), index.total / 2**30, index.limit / 2**30)
    shared = None
    if settings.bucket is not None:
        shared = await S3Tier.open_checked(settings.bucket, settings.s3_prefix)
    store = TieredStore(disk, shared, index)
    resumed = store.start()
    if shared is not None:
        log.info(
            "S3 tier: bucket %s%s at %s%s",
            shared.bucket,
            f" prefix {shared.prefix}" if shared.prefix else "",
            shared.endpoint,
            f"; resuming {resumed} uploads" if resumed else "",
        )
    return store


async def serve(settings: Settings, ready: asyncio.Future[int] | None = None) -> None:
    """Run until SIGTERM/SIGINT, then stop accepting and let responses in flight finish (bounded)."""
    store = await open_store(settings)
    try:
        await _serve(settings, store, ready)
    finally:
        await store.close()


async def _serve(settings: Settings, store: TieredStore, ready: asyncio.Future[int] | None) -> None:
    root = settings.cache_dir
    upstream = UpstreamClient(settings)
    fills = FillMap(settings.max_fills, settings.max_fill_clients)
    tracker = RequestTracker()

    health = StorageHealth()
    policy = Policy.from_settings(settings)
    services = Services(
        blobs=BlobService(store, upstream, fills, root, health, settings.s3_redirect, policy),
        manifests=ManifestService(store, upstream, policy),
        lists=ListService(store, upstream, policy),
        disk=store.local,
        health=health,
        guard=upstream.guard,
        upstream_names=frozenset(settings.upstreams),
        tracker=tracker,
        client_idle_timeout=settings.client_idle_timeout,
    )
    app = make_app(services)
    server = PlainHTTPServer(
        app, xheaders=False, max_header_size=MAX_HEADER_SIZE, idle_connection_timeout=settings.client_idle_timeout
    )
    try:
        bound = bind_sockets(settings.port, address=settings.host)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}") from None
    server.add_sockets(bound)
    port = bound[0].getsockname()[1]
    log.info("regcache listening on %s:%d, cache dir %s", settings.host, port, root)
    if settings.offline:
        log.info("offline: no registry is contacted; what is not cached is answered 404")
    if ready is not None and not ready.done():
        ready.set_result(port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info(
            "shutting down: no new connections; waiting up to %.0fs for %d requests", SHUTDOWN_GRACE, tracker.active
        )
        server.stop()
        if await tracker.wait_idle(SHUTDOWN_GRACE):
            # Idle keep-alive connections close now; busy ones were waited for above.
            try:
                await asyncio.wait_for(server.close_all_connections(), 5.0)
            except TimeoutError:
                pass
        else:
            log.warning("shutdown: %d requests still running after %.0fs; closing them", tracker.active, SHUTDOWN_GRACE)
        upstream.close()
        log.info("stopped")
