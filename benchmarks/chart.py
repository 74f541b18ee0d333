"""The PNG view of a run: one panel per scenario, a pair of bars (plain, TLS upstream) per system."""

from __future__ import annotations

from pathlib import Path

from benchmarks.report import SCENARIOS, Results, fmt

#: bar colours per upstream kind: (direct, every other system)
COLOURS = {"plain": ("#888888", "#3b75af"), "tls": ("#bbbbbb", "#e08a2c")}


def chart(results: Results, png: Path) -> None:
    """Bars of each scenario's figure per (system, upstream kind); skipped ones labelled as such."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    names = results.systems
    kinds = results.kinds
    width = 0.8 / len(kinds)
    fig, axes = plt.subplots(2, 4, figsize=(22, 9.5))
    for ax in axes.flat[len(SCENARIOS) :]:
        ax.set_visible(False)
    for ax, sc in zip(axes.flat, SCENARIOS, strict=False):
        top = 0.0
        positive: list[float] = []
        for k, kind in enumerate(kinds):
            values = [results.median(kind, sc.key, name, sc.metric) or 0.0 for name in names]
            top = max(top, *values)
            positive += [v for v in values if v > 0]
            xs = [i + (k - (len(kinds) - 1) / 2) * width for i in range(len(names))]
            colours = [COLOURS.get(kind, COLOURS["plain"])[0 if n == "direct" else 1] for n in names]
            bars = ax.bar(xs, values, width, color=colours)
            for bar, name, value in zip(bars, names, values, strict=True):
                ratio = results.ratios(kind, sc.key, name).get(sc.metric)
                label = "skip" if results.medians(kind, sc.key, name) is None else fmt(value)
                if ratio is not None and name != "direct":
                    label += f"\n{ratio:.2f}×"
                ax.text(
                    bar.get_x() + bar.get_width() / 2, bar.get_height(), label, ha="center", va="bottom", fontsize=6
                )
        ax.set_xticks(range(len(names)), names, rotation=25, ha="right", fontsize=8)
        ax.set_title(f"{sc.title}\n{sc.unit}, {'higher' if sc.higher_is_better else 'lower'} is better", fontsize=9)
        if sc.key == "manifests" and positive and min(positive) * 20 < top:
            ax.set_yscale("log")  # nginx answers from memory, 10-100x the others
            ax.set_ylim(min(positive) / 2, top * 5)
        else:
            ax.set_ylim(0, (top or 1.0) * 1.3)
        # Labelled by the caches' colour: the bar container's first patch is direct's grey.
        legend = [Patch(color=COLOURS.get(k, COLOURS["plain"])[1], label=f"{k} upstream") for k in kinds]
        ax.legend(handles=legend, fontsize=7, loc="upper left")
    meta = results.meta
    fig.suptitle(
        f"regcache pull benchmark: {meta.get('size_human')} blob, 3 × {meta.get('three_size_human')} blobs, "
        f"median of {meta.get('runs')}, {meta.get('cpus')} CPUs, {meta.get('started')}",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
