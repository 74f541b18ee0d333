"""Results of one harness run: medians, ratios to `direct`, the terminal table, JSON and PNG.

The JSON is the record (every run's figures, medians, ratios, skips with their reasons, the
machine); the table and the chart are views of it.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
        "manifests",
        "4. cached manifest GETs",
        "requests_per_s",
        "req/s",
        True,
        (("p50_ms", "p50 ms"), ("p99_ms", "p99 ms")),
    ),
    Scenario("ctr_cold", "5a. ctr image pull, cold", "seconds", "s", False),
    Scenario("ctr_warm", "5b. ctr image pull, warm", "seconds", "s", False),
)
COMMON = (("cpu_s", "CPU s"), ("peak_rss_mib", "RSS MiB"), ("upstream_gets", "up GETs"), ("upstream_mb", "up MB"))


@dataclass
class Results:
    meta: dict[str, Any]
    systems: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> status, reason, description
    runs: dict[str, dict[str, list[dict[str, float]]]] = field(default_factory=dict)  # scenario -> system -> runs
    skipped: dict[str, dict[str, str]] = field(default_factory=dict)  # scenario -> system -> reason

    def add_system(self, name: str, description: str) -> None:
        self.systems[name] = {"status": "ok", "reason": None, "description": description}

    def skip_system(self, name: str, reason: str, status: str = "skipped") -> None:
        if self.systems[name]["status"] == "ok":
            self.systems[name].update(status=status, reason=reason)

    def add_run(self, scenario: str, system: str, figures: dict[str, float]) -> None:
        self.runs.setdefault(scenario, {}).setdefault(system, []).append(figures)

    def skip(self, scenario: str, system: str, reason: str) -> None:
        self.skipped.setdefault(scenario, {}).setdefault(system, reason)

    # -- summaries ----------------------------------------------------------------------------
    def medians(self, scenario: str, system: str) -> dict[str, float] | None:
        runs = self.runs.get(scenario, {}).get(system)
        if not runs:
            return None
        keys = sorted({k for run in runs for k in run})
        return {k: statistics.median([run[k] for run in runs if k in run]) for k in keys}

    def ratios(self, scenario: str, system: str) -> dict[str, float]:
        mine, base = self.medians(scenario, system), self.medians(scenario, "direct")
        if mine is None or base is None:
            return {}
        return {k: mine[k] / base[k] for k in mine if base.get(k)}

    def reason(self, scenario: str, system: str) -> str | None:
        """Why there is no figure for this system in this scenario (None if there is one)."""
        if self.runs.get(scenario, {}).get(system):
            return None
        status = self.systems[system]
        if status["status"] != "ok":
            return f"{status['status']}: {status['reason']}"
        return "skipped: " + self.skipped.get(scenario, {}).get(system, "not measured")

    def targets(self, system: str = "regcache-disk") -> list[dict[str, Any]]:
        """The issue's targets for regcache-disk, checked against the anchors of this same run.

        Each: the target, regcache's median, the anchor's median (if it is relative to one),
        the ratio, and whether it is met (None when a figure is missing).
        """

        def med(scenario: str, name: str, key: str) -> float | None:
            found = self.medians(scenario, name)
            return None if found is None else found.get(key)

        dist, nginx = "distribution-proxy", "nginx-cache"
        # (target, value, anchor or None for an absolute bound, bound, "ge" or "le")
        table: list[tuple[str, float | None, float | None, float, str]] = [
            (
                "cold MB/s >= 0.8x distribution proxy",
                med("cold", system, "mb_per_s"),
                med("cold", dist, "mb_per_s"),
                0.8,
                "ge",
            ),
            ("cold CPU s per GiB <= 1.3", med("cold", system, "cpu_s_per_gib"), None, 1.3, "le"),
            (
                "warm MB/s >= 0.9x nginx static sendfile",
                med("warm", system, "mb_per_s"),
                med("warm", nginx, "static_mb_per_s"),
                0.9,
                "ge",
            ),
            ("concurrent: 1 upstream GET", med("concurrent", system, "upstream_gets"), None, 1, "le"),
            (
                "concurrent wall <= 1.0x nginx proxy_cache",
                med("concurrent", system, "wall_s"),
                med("concurrent", nginx, "wall_s"),
                1.0,
                "le",
            ),
            ("concurrent peak RSS <= 64 MiB", med("concurrent", system, "peak_rss_mib"), None, 64, "le"),
            (
                "manifest GETs >= 10x distribution proxy",
                med("manifests", system, "requests_per_s"),
                med("manifests", dist, "requests_per_s"),
                10,
                "ge",
            ),
            (
                "ctr pull cold <= distribution proxy",
                med("ctr_cold", system, "seconds"),
                med("ctr_cold", dist, "seconds"),
                1.0,
                "le",
            ),
            (
                "ctr pull warm <= direct",
                med("ctr_warm", system, "seconds"),
                med("ctr_warm", "direct", "seconds"),
                1.0,
                "le",
            ),
        ]
        out = []
        for target, value, anchor, bound, op in table:
            relative = target.endswith(("proxy", "sendfile", "proxy_cache", "direct"))
            compared = None if value is None or (relative and not anchor) else (value / anchor if relative else value)
            met = None if compared is None else (compared >= bound if op == "ge" else compared <= bound)
            out.append(
                {
                    "target": target,
                    "value": value,
                    "anchor": anchor,
                    "ratio": compared if relative else None,
                    "met": met,
                }
            )
        return out

    def to_json(self) -> dict[str, Any]:
        scenarios: dict[str, Any] = {}
        for sc in SCENARIOS:
            per_system: dict[str, Any] = {}
            for name in self.systems:
                med = self.medians(sc.key, name)
                if med is None:
                    per_system[name] = {"skipped": self.reason(sc.key, name)}
                    continue
                ratios = self.ratios(sc.key, name)
                per_system[name] = {
                    "median": med[sc.metric],
                    "ratio_to_direct": ratios.get(sc.metric),
                    "medians": med,
                    "ratios_to_direct": ratios,
                    "runs": self.runs[sc.key][name],
                }
            scenarios[sc.key] = {
                "title": sc.title,
                "metric": sc.metric,
                "unit": sc.unit,
                "higher_is_better": sc.higher_is_better,
                "systems": per_system,
            }
        return {"meta": self.meta, "systems": self.systems, "scenarios": scenarios, "targets": self.targets()}

    # -- views ----------------------------------------------------------------------------------
    def table(self) -> str:
        lines = []
        runs = self.meta.get("runs", 1)
        for sc in SCENARIOS:
            better = "higher" if sc.higher_is_better else "lower"
            lines.append("")
            lines.append(f"{sc.title} ({sc.unit}, {better} is better; median of {runs})")
            cols = (*sc.columns, *COMMON)
            head = f"{'system':<20}{sc.unit:>10}{'×direct':>9}" + "".join(f"{h:>{max(len(h) + 2, 9)}}" for _, h in cols)
            lines.append(head)
            for name in self.systems:
                med = self.medians(sc.key, name)
                if med is None:
                    lines.append(f"{name:<20}  {self.reason(sc.key, name)}")
                    continue
                ratio = self.ratios(sc.key, name).get(sc.metric)
                row = f"{name:<20}{_fmt(med[sc.metric]):>10}{_fmt(ratio, 2):>9}"
                for key, h in cols:
                    row += f"{_fmt(med.get(key)):>{max(len(h) + 2, 9)}}"
                lines.append(row)
        lines.append("")
        lines.append("targets for regcache-disk (issue 4), against the anchors of this run")
        for t in self.targets():
            verdict = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
            figure = _fmt(t["value"]) + (f" ({t['ratio']:.2f}x)" if t["ratio"] is not None else "")
            lines.append(f"  {verdict:<7}{t['target']:<45}{figure}")
        return "\n".join(lines)

    def write(self, path: Path) -> tuple[Path, Path | None, str | None]:
        """Write the JSON and, if matplotlib is there, the PNG next to it; (json, png, why no png)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1))
        png = path.with_suffix(".png")
        try:
            chart(self, png)
        except ImportError as exc:
            return path, None, f"no chart: {exc} (pip install matplotlib)"
        return path, png, None


def _fmt(value: float | None, digits: int | None = None) -> str:
    if value is None:
        return "-"
    if digits is not None:
        return f"{value:.{digits}f}"
    if value >= 100 or value == int(value):
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def chart(results: Results, png: Path) -> None:
    """One bar chart per scenario: its figure per system, skipped systems labelled as such."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results.systems)
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    for ax, sc in zip(axes.flat, SCENARIOS, strict=True):
        values = []
        for name in names:
            med = results.medians(sc.key, name)
            values.append(med[sc.metric] if med else 0.0)
        bars = ax.bar(range(len(names)), values, color=["#888888" if n == "direct" else "#3b75af" for n in names])
        ax.set_xticks(range(len(names)), names, rotation=25, ha="right", fontsize=8)
        ax.set_title(f"{sc.title}\n{sc.unit}, {'higher' if sc.higher_is_better else 'lower'} is better", fontsize=9)
        top = max(values) if any(values) else 1.0
        for bar, name, value in zip(bars, names, values, strict=True):
            ratio = results.ratios(sc.key, name).get(sc.metric)
            label = "skipped" if results.medians(sc.key, name) is None else f"{_fmt(value)}"
            if ratio is not None and name != "direct":
                label += f"\n{ratio:.2f}×"
            above = bar.get_height() * 1.1 if sc.key == "manifests" else bar.get_height() + top * 0.02
            ax.text(bar.get_x() + bar.get_width() / 2, max(above, 1.0), label, ha="center", fontsize=7)
        if sc.key == "manifests" and min(v for v in values if v > 0) * 20 < top:
            ax.set_yscale("log")  # nginx answers from memory, 10-100x the others
            ax.set_ylim(1, top * 5)
        else:
            ax.set_ylim(0, top * 1.25)
    meta = results.meta
    fig.suptitle(
        f"regcache pull benchmark: {meta.get('size_human')} blob, median of {meta.get('runs')}, "
        f"{meta.get('cpus')} CPUs, {meta.get('started')}",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
