"""Every Prometheus metric regcache exports, in one place.

`containerd_cache_total` keeps the name and labels dashboards of the original tool already use;
everything else is under `regcache_`.
"""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram

# Registry names come from clients (`ns`): label at most this many, the rest as "other", so a
# client cannot grow the metrics without bound.
MAX_REGISTRY_LABELS = 64
_registry_labels: set[str] = set()


def registry_label(registry: str) -> str:
    if registry in _registry_labels:
        return registry
    if len(_registry_labels) < MAX_REGISTRY_LABELS:
        _registry_labels.add(registry)
        return registry
    return "other"


CACHE_RESULTS = Counter(
    "containerd_cache",
    "Manifest, blob, tag list and referrers requests by cache result: hit (served from cache), "
    "miss (fetched and saved), skip (fetched, not saved: skip-tags, skip-repos, cache-manifests=no, "
    "private registry, non-2xx).",
    ["result"],
)
for _result in ("hit", "miss", "skip"):
    CACHE_RESULTS.labels(_result)

REQUESTS = Counter(
    "regcache_requests",
    "Client requests answered, by kind (manifest, blob, tags, referrers, other), method and status code.",
    ["kind", "method", "status"],
)
SERVED_BYTES = Counter(
    "regcache_served_bytes",
    "Body bytes sent to clients, by where they came from (disk: a cache hit; upstream: a "
    "download in flight or a pass-through; s3: a copy from the bucket in flight).",
    ["source"],
)
for _source in ("disk", "upstream", "s3"):
    SERVED_BYTES.labels(_source)

UPSTREAM_REQUESTS = Counter(
    "regcache_upstream_requests",
    "Requests sent to upstream registries, by registry and status (or 'error' when no answer).",
    ["registry", "status"],
)
UPSTREAM_BYTES = Counter(
    "regcache_upstream_bytes",
    "Body bytes received from upstream registries.",
    ["registry"],
)
UPSTREAM_LATENCY = Histogram(
    "regcache_upstream_response_seconds",
    "Time from sending an upstream request to receiving its response headers.",
    ["registry"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
FILLS_IN_FLIGHT = Gauge(
    "regcache_fills_in_flight",
    "Upstream downloads into the cache running now.",
)
FILL_JOINS = Counter(
    "regcache_fill_joins",
    "Clients that joined a download already in flight instead of starting their own.",
)
VERIFICATION_FAILURES = Counter(
    "regcache_verification_failures",
    "Upstream content refused because its digest or size was wrong (nothing was stored).",
    ["registry", "reason"],
)
TIER_ERRORS = Counter(
    "regcache_tier_errors",
    "Failures of regcache's own storage, by tier (disk, staging, s3) and operation; pulls go on without the tier.",
    ["tier", "op"],
)
LOCAL_BYTES = Gauge(
    "regcache_local_bytes",
    "Bytes held by the local tier (tracked when --local-cache-size bounds it, as in S3 mode).",
)
CACHE_VOLUME_BYTES = Gauge(
    "regcache_cache_volume_bytes",
    "The volume holding --cache-dir: its size and the bytes still free for regcache (state), read at each scrape.",
    ["state"],
)
EVICTIONS = Counter(
    "regcache_local_evictions",
    "Objects evicted from the local tier to keep it under --local-cache-size.",
)
UPLOADS = Counter(
    "regcache_s3_uploads",
    "Background copies of committed objects to S3, by result (uploaded, present: another "
    "replica had put it there, vanished: deleted locally first, rejected: S3 found the local "
    "copy corrupt and it was removed, error).",
    ["result"],
)
UPLOADS_PENDING = Gauge(
    "regcache_s3_uploads_pending",
    "Objects committed locally and not yet in S3 (retried with backoff while S3 fails).",
)
STALE_SERVED = Counter(
    "regcache_stale_served",
    "Kept answers served because the registry could not give a fresh one (unreachable, timeout, "
    "429, 5xx), by registry and kind: tag (a stored tag past --tag-ttl), tags (a tags/list page), "
    "referrers.",
    ["registry", "kind"],
)
STORAGE_PASSTHROUGH = Counter(
    "regcache_storage_passthrough",
    "Blob downloads streamed to the client without being stored, because the cache's own "
    "storage could not take them (full disk, unwritable cache dir).",
)
FILL_RESUMES = Counter(
    "regcache_fill_resumes",
    "Downloads the upstream broke off that were continued with a Range request.",
    ["registry"],
)
OVERLOADED = Counter(
    "regcache_overloaded",
    "Requests answered 503 because a limit was reached: fills (--max-fills) or fill-clients (--max-fill-clients).",
    ["limit"],
)
for _limit in ("fills", "fill-clients"):
    OVERLOADED.labels(_limit)
ECR_TOKEN_REFRESHES = Counter(
    "regcache_ecr_token_refresh",
    "Amazon ECR GetAuthorizationToken calls, by registry and result (ok, error: the registry's "
    "401 goes to clients until a later call succeeds).",
    ["registry", "result"],
)

OFFLINE_MISSES = Counter(
    "regcache_offline_misses",
    "Requests for content not in the cache that --offline answered 404 instead of asking the "
    "registry, by registry and kind (manifest, blob).",
    ["registry", "kind"],
)


def watch_cache_volume(root: Path) -> None:
    """Size and free space of the cache volume, read by one statvfs when Prometheus scrapes: the
    disk-nearly-full alert needs no poller, and a scrape sees the space as it is then."""

    def read(state: str) -> float:
        try:
            stat = os.statvfs(root)
        except OSError:
            return float("nan")
        blocks = stat.f_blocks if state == "size" else stat.f_bavail
        return float(blocks * stat.f_frsize)

    for state in ("size", "free"):
        CACHE_VOLUME_BYTES.labels(state).set_function(lambda state=state: read(state))
