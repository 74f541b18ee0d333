"""The Core v2 issue's targets for regcache-disk, each checked against anchors of the same run.

A target is relative to another system's figure in the same scenario and upstream kind (the
anchor: distribution's proxy mode, nginx proxy_cache) or an absolute bound. Comparing within
one run is what makes the check meaningful on a shared machine, where absolute figures drift.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from benchmarks.upstreams import KINDS, PLAIN, TLS

CHECKED = "regcache-disk"
DIST, NGINX = "distribution-proxy", "nginx-cache"


@dataclass(frozen=True)
class Target:
    text: str
    kinds: tuple[str, ...]  # the upstream kinds it applies to
    scenario: str
    metric: str
    op: str  # "ge", "le" or "eq": how the value (or its ratio to the anchor) compares to `bound`
    bound: float
    anchor: str | None = None  # the system compared against; None for an absolute bound
    anchor_metric: str | None = None  # the anchor's figure, when it is not `metric`


TARGETS: tuple[Target, ...] = (
    Target("cold MB/s >= 0.8x distribution proxy", (PLAIN,), "cold", "mb_per_s", "ge", 0.8, DIST),
    Target("cold server CPU <= 1.5 s per GiB", (PLAIN,), "cold", "cpu_s_per_gib", "le", 1.5),
    Target("cold MB/s >= 1.1x distribution proxy", (TLS,), "cold", "mb_per_s", "ge", 1.1, DIST),
    Target("cold MB/s >= 1.1x nginx proxy_cache", (TLS,), "cold", "mb_per_s", "ge", 1.1, NGINX),
    Target("3 cold blobs: agg MB/s >= 0.8x distribution proxy", KINDS, "three", "aggregate_mb_per_s", "ge", 0.8, DIST),
    Target("3 cold blobs: agg MB/s >= 1.0x nginx proxy_cache", KINDS, "three", "aggregate_mb_per_s", "ge", 1.0, NGINX),
    Target("concurrent: exactly 1 upstream GET", KINDS, "concurrent", "upstream_gets", "eq", 1),
    Target("concurrent wall <= 1.0x nginx proxy_cache_lock", KINDS, "concurrent", "wall_s", "le", 1.0, NGINX),
    Target("concurrent: last client's 1st byte <= 0.5 s", KINDS, "concurrent", "last_first_byte_s", "le", 0.5),
    Target("concurrent peak RSS <= 64 MiB", KINDS, "concurrent", "peak_rss_mib", "le", 64),
    Target("warm MB/s >= 0.9x nginx static sendfile", KINDS, "warm", "mb_per_s", "ge", 0.9, NGINX, "static_mb_per_s"),
    Target("cached manifests by tag >= 10x distribution proxy", KINDS, "manifests", "requests_per_s", "ge", 10, DIST),
)


@dataclass(frozen=True)
class Check:
    """One target for one upstream kind: the figures and the verdict (None: a figure is missing)."""

    target: Target
    kind: str
    value: float | None
    anchor: float | None
    ratio: float | None
    met: bool | None

    @property
    def verdict(self) -> str:
        return {True: "met", False: "MISSED", None: "n/a"}[self.met]


#: (kind, scenario, system, figure) -> the median, or None when it was not measured
Median = Callable[[str, str, str, str], float | None]


def check(median: Median, kinds: tuple[str, ...], system: str = CHECKED) -> list[Check]:
    """Every target that applies to one of `kinds`, in the order of TARGETS, plain before TLS."""
    out = []
    for target in TARGETS:
        for kind in (k for k in kinds if k in target.kinds):
            value = median(kind, target.scenario, system, target.metric)
            anchor = None
            compared = value
            if target.anchor is not None:
                anchor = median(kind, target.scenario, target.anchor, target.anchor_metric or target.metric)
                compared = None if value is None or not anchor else value / anchor
            met = None
            if compared is not None:
                met = {"ge": compared >= target.bound, "le": compared <= target.bound, "eq": compared == target.bound}[
                    target.op
                ]
            ratio = compared if target.anchor is not None else None
            out.append(Check(target, kind, value, anchor, ratio, met))
    return out
