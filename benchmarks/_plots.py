"""PNG plots of the utility benchmarks (matplotlib, Agg backend): pure functions of the results."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

Stats = dict[str, float]


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


def bar_chart(groups: dict[str, dict[str, Stats]], ylabel: str, path: Path, scale: float = 100.0) -> None:
    """One panel per group (model); one bar per series with mean ± std."""
    fig, axes = plt.subplots(1, len(groups), figsize=(4.8 * len(groups), 3.6), squeeze=False)
    for ax, (group, series) in zip(axes[0], groups.items()):
        labels = list(series)
        ax.bar(range(len(labels)), [scale * s["mean"] for s in series.values()],
               yerr=[scale * s["std"] for s in series.values()], capsize=4, color=plt.cm.tab10.colors[:len(labels)])
        ax.set_xticks(range(len(labels)), [label.replace(" (", "\n(").replace(" of ", "\nof ") for label in labels],
                      fontsize=7)
        ax.set_title(group, fontsize=9)
        ax.set_ylabel(ylabel, fontsize=8)
    _save(fig, path)


def line_panels(panels: dict[str, dict[str, tuple[list[float], list[Stats]]]], xlabel: str, ylabel: str, path: Path,
                xticklabels: list[str] | None = None, scale: float = 100.0, logy: bool = False,
                legend_below: bool = False) -> None:
    """One panel per key; one line per series: (x values, stats per x), mean with a ± std band; the legend
    inside each panel, or below it (``legend_below``) where the lines fill the panel."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 3.6), squeeze=False)
    for ax, (title, series) in zip(axes[0], panels.items()):
        for label, (xs, stats) in series.items():
            mean = [scale * s["mean"] for s in stats]
            std = [scale * s["std"] for s in stats]
            ax.plot(xs, mean, marker="o", label=label)
            ax.fill_between(xs, [m - d for m, d in zip(mean, std)], [m + d for m, d in zip(mean, std)], alpha=0.2)
        if xticklabels is not None:
            ax.set_xticks(xs, xticklabels)
        if logy:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        if legend_below:
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2))
        else:
            ax.legend(fontsize=7)
    if legend_below:
        fig.set_figheight(fig.get_figheight() + 1.0)
    _save(fig, path)
