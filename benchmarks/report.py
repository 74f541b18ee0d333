"""Results of one harness run: medians, ratios to `direct`, the terminal table, JSON and PNG.

Every figure is keyed by (upstream kind, scenario, system); a ratio to `direct` is to direct
against the same upstream kind. The JSON is the record (every run's figures, medians, ratios,
skips with their reasons, the targets, the machine); the table and the chart are views of it.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.targets import CHECKED, check


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    metric: str  # the figure the scenario is about
    unit: str
    higher_is_better: bool
    columns: tuple[tuple[str, str], ...] = ()  # (field, heading) shown besides the metric


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "cold",
        "1. cold single client",
        "mb_per_s",
        "MB/s",
        True,
        (("ttfb_ms", "1st byte ms"), ("cpu_s_per_gib", "CPU s/GiB"), ("stored_after_s", "stored after s")),
    ),
    Scenario(
        "warm",
        "2. warm single client",
        "mb_per_s",
        "MB/s",
        True,
        (("cpu_s_per_gib", "CPU s/GiB"), ("static_mb_per_s", "nginx static MB/s")),
    ),
    Scenario(
        "concurrent",
        "3. concurrent cold clients on one blob",
        "wall_s",
        "s",
        False,
        (("aggregate_mb_per_s", "agg MB/s"), ("last_first_byte_s", "last 1st byte s")),
    ),
    Scenario(
        "three",
        "4. three different cold blobs at once",
        "aggregate_mb_per_s",
        "MB/s",
        True,
        (("wall_s", "wall s"), ("cpu_s_per_gib", "CPU s/GiB"), ("last_first_byte_s", "last 1st byte s")),
    ),
    Scenario(
        "manifests",
        "5. cached manifest GETs",
        "requests_per_s",
        "req/s",
        True,
        (("p50_ms", "p50 ms"), ("p99_ms", "p99 ms")),
    ),
    Scenario("ctr_cold", "6a. ctr image pull, cold", "seconds", "s", False),
    Scenario("ctr_warm", "6b. ctr image pull, warm", "seconds", "s", False),
)
COMMON = (("cpu_s", "CPU s"), ("peak_rss_mib", "RSS MiB"), ("upstream_gets", "up GETs"), ("upstream_mb", "up MB"))


@dataclass
class Status:
    """Whether a system ran against one upstream kind, and if not, why."""

    status: str = "ok"  # "ok", "skipped" or "failed"
    reason: str | None = None


@dataclass
class Results:
    meta: dict[str, Any]
    kinds: tuple[str, ...]
    upstreams: dict[str, dict[str, object]] = field(default_factory=dict)  # kind -> url, image, digests
    descriptions: dict[str, str] = field(default_factory=dict)  # system -> what it is
    status: dict[str, dict[str, Status]] = field(default_factory=dict)  # kind -> system -> status
    runs: dict[tuple[str, str, str], list[dict[str, float]]] = field(default_factory=dict)  # (kind, scenario, system)
    skipped: dict[tuple[str, str, str], str] = field(default_factory=dict)  # (kind, scenario, system) -> why

    @property
    def systems(self) -> list[str]:
        return list(self.descriptions)

    def add_system(self, name: str, description: str) -> None:
        self.descriptions[name] = description
        for kind in self.kinds:
            self.status.setdefault(kind, {})[name] = Status()

    def ok(self, kind: str, name: str) -> bool:
        return self.status[kind][name].status == "ok"

    def skip_system(self, kind: str, name: str, reason: str, status: str = "skipped") -> None:
        """The system cannot run (or broke) against this upstream kind; the first reason stays."""
        if self.ok(kind, name):
            self.status[kind][name] = Status(status, reason)

    def failed(self) -> list[tuple[str, str]]:
        return [(k, n) for k, by_name in self.status.items() for n, s in by_name.items() if s.status == "failed"]

    def add_run(self, kind: str, scenario: str, system: str, figures: dict[str, float]) -> None:
        self.runs.setdefault((kind, scenario, system), []).append(figures)

    def skip(self, kind: str, scenario: str, system: str, reason: str) -> None:
        self.skipped.setdefault((kind, scenario, system), reason)

    # -- summaries ----------------------------------------------------------------------------
    def medians(self, kind: str, scenario: str, system: str) -> dict[str, float] | None:
        runs = self.runs.get((kind, scenario, system))
        if not runs:
            return None
        keys = sorted({k for run in runs for k in run})
        return {k: statistics.median([run[k] for run in runs if k in run]) for k in keys}

    def median(self, kind: str, scenario: str, system: str, figure: str) -> float | None:
        found = self.medians(kind, scenario, system)
        return None if found is None else found.get(figure)

    def ratios(self, kind: str, scenario: str, system: str) -> dict[str, float]:
        mine, base = self.medians(kind, scenario, system), self.medians(kind, scenario, "direct")
        if mine is None or base is None:
            return {}
        return {k: mine[k] / base[k] for k in mine if base.get(k)}

    def reason(self, kind: str, scenario: str, system: str) -> str | None:
        """Why there is no figure for this system in this scenario (None if there is one)."""
        if self.runs.get((kind, scenario, system)):
            return None
        status = self.status[kind][system]
        if status.status != "ok":
            return f"{status.status}: {status.reason}"
        return "skipped: " + self.skipped.get((kind, scenario, system), "not measured")

    def to_json(self) -> dict[str, Any]:
        upstreams: dict[str, Any] = {}
        for kind in self.kinds:
            scenarios: dict[str, Any] = {}
            for sc in SCENARIOS:
                per_system: dict[str, Any] = {}
                for name in self.systems:
                    med = self.medians(kind, sc.key, name)
                    if med is None:
                        per_system[name] = {"skipped": self.reason(kind, sc.key, name)}
                        continue
                    ratios = self.ratios(kind, sc.key, name)
                    per_system[name] = {
                        "median": med[sc.metric],
                        "ratio_to_direct": ratios.get(sc.metric),
                        "medians": med,
                        "ratios_to_direct": ratios,
                        "runs": self.runs[(kind, sc.key, name)],
                    }
                scenarios[sc.key] = {"systems": per_system}
            upstreams[kind] = {
                **self.upstreams.get(kind, {}),
                "systems": {n: vars(s) for n, s in self.status[kind].items()},
                "scenarios": scenarios,
            }
        return {
            "meta": self.meta,
            "systems": self.descriptions,
            "scenarios": {
                sc.key: {
                    "title": sc.title,
                    "metric": sc.metric,
                    "unit": sc.unit,
                    "higher_is_better": sc.higher_is_better,
                }
                for sc in SCENARIOS
            },
            "upstreams": upstreams,
            "targets": [
                {
                    "target": c.target.text,
                    "upstream": c.kind,
                    "system": CHECKED,
                    "value": c.value,
                    "anchor_system": c.target.anchor,
                    "anchor": c.anchor,
                    "ratio": c.ratio,
                    "met": c.met,
                }
                for c in check(self.median, self.kinds)
            ],
        }

    # -- views ----------------------------------------------------------------------------------
    def table(self) -> str:
        lines = []
        runs = self.meta.get("runs", 1)
        for sc in SCENARIOS:
            better = "higher" if sc.higher_is_better else "lower"
            lines.append("")
            lines.append(f"{sc.title} ({sc.unit}, {better} is better; median of {runs})")
            cols = (*sc.columns, *COMMON)
            head = f"{'upstream':<9}{'system':<20}{sc.unit:>10}{'×direct':>9}"
            lines.append(head + "".join(f"{h:>{max(len(h) + 2, 9)}}" for _, h in cols))
            for kind in self.kinds:
                for name in self.systems:
                    med = self.medians(kind, sc.key, name)
                    if med is None:
                        lines.append(f"{kind:<9}{name:<20}  {self.reason(kind, sc.key, name)}")
                        continue
                    ratio = self.ratios(kind, sc.key, name).get(sc.metric)
                    row = f"{kind:<9}{name:<20}{fmt(med[sc.metric]):>10}{fmt(ratio, 2):>9}"
                    for key, h in cols:
                        row += f"{fmt(med.get(key)):>{max(len(h) + 2, 9)}}"
                    lines.append(row)
        lines.append("")
        lines.append(f"targets for {CHECKED} (Core v2), against the anchors of this run")
        for c in check(self.median, self.kinds):
            figure = fmt(c.value) + (f" ({c.ratio:.2f}x)" if c.ratio is not None else "")
            lines.append(f"  {c.verdict:<7}{c.kind:<6}{c.target.text:<52}{figure}")
        return "\n".join(lines)

    def write(self, path: Path) -> tuple[Path, Path | None, str | None]:
        """Write the JSON and, if matplotlib is there, the PNG next to it; (json, png, why no png)."""
        from benchmarks.chart import chart

        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1))
        png = path.with_suffix(".png")
        try:
            chart(self, png)
        except ImportError as exc:
            return path, None, f"no chart: {exc} (pip install matplotlib)"
        return path, png, None


def fmt(value: float | None, digits: int | None = None) -> str:
    if value is None:
        return "-"
    if digits is not None:
        return f"{value:.{digits}f}"
    if value >= 100 or value == int(value):
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"
