"""Report figures as PNG bytes, drawn with matplotlib's Agg canvas (no pyplot, no global state)."""

from __future__ import annotations

import io
import math
from typing import Sequence

from privacy_accounting.report_models import ShardEntry


def _png(figure) -> bytes:  # type: ignore[no-untyped-def]
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


Curve = tuple[list[str], list[tuple[int, float]], float | None, bool]


def drawable_curves(shards: Sequence[ShardEntry]) -> list[Curve]:
    """The curves worth drawing: (shard labels, finite points, budget, turns non-private), shards with the
    same points and budget merged into one line (one legend entry), shards with no finite step left out."""
    prefix = len({s.data_source for s in shards}) > 1
    merged: dict[tuple[tuple[tuple[int, float], ...], float | None], tuple[list[str], bool]] = {}
    for shard in shards:
        points = tuple((p.steps, p.epsilon) for p in shard.curve if math.isfinite(p.epsilon))
        if not any(steps > 0 for steps, _ in points):
            continue  # nothing to draw: a non-private run only
        label = f"{shard.data_source}/{shard.shard}" if prefix else shard.shard
        key = (points, shard.budget.epsilon if shard.budget else None)
        labels, turns = merged.get(key, ([], False))
        merged[key] = ([*labels, label], turns or len(points) < len(shard.curve))
    return [(labels, list(points), budget, turns) for (points, budget), (labels, turns) in merged.items()]


def epsilon_curve_png(shards: Sequence[ShardEntry]) -> bytes | None:
    """Epsilon of each shard's composition against cumulative steps, budgets dashed; None if no curve.

    Every legend entry is a drawn line: shards with identical curves share one, shards with no finite
    epsilon (non-private runs only) are left out (the caller says so), budgets share one entry."""
    from matplotlib.figure import Figure

    curves = drawable_curves(shards)
    if not curves:
        return None
    figure = Figure(figsize=(7.0, 3.8))
    axes = figure.add_subplot(1, 1, 1)
    budgets_drawn: set[float] = set()
    for index, (labels, points, budget, turns) in enumerate(curves):
        color = f"C{index % 10}"
        label = ", ".join(labels) + (" (then non-private: ∞)" if turns else "")
        width = 1.5 + 1.5 * (len(curves) - 1 - index)  # earlier lines wider: one that another overlays stays visible
        axes.plot([x for x, _ in points], [y for _, y in points], marker="o", markersize=2 + width, color=color,
                  linewidth=width, label=label)
        if budget is not None and budget not in budgets_drawn:
            axes.axhline(budget, color="#57606a", linestyle="--", linewidth=1,
                         label="budget" if not budgets_drawn else None)
            budgets_drawn.add(budget)
    axes.set_xlabel("cumulative steps on the shard")
    axes.set_ylabel("epsilon (upper bound)")
    axes.set_ylim(bottom=0)
    axes.set_title("Epsilon against steps per shard (dashed: budget)")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    return _png(figure)


def budget_bars_png(shards: Sequence[ShardEntry]) -> bytes | None:
    """Horizontal spent/remaining bar per shard; a shard without budget shows spent only; None if no shard."""
    from matplotlib.figure import Figure

    if not shards:
        return None
    figure = Figure(figsize=(7.0, 0.6 + 0.45 * len(shards)))
    axes = figure.add_subplot(1, 1, 1)
    labels = []
    finite_max = max(
        [s.spent.epsilon for s in shards if math.isfinite(s.spent.epsilon)]
        + [s.budget.epsilon for s in shards if s.budget is not None]
        + [1e-9]
    )
    for row, shard in enumerate(shards):
        labels.append(f"{shard.data_source}/{shard.shard}")
        spent = shard.spent.epsilon
        shown = spent if math.isfinite(spent) else finite_max * 1.1
        if shard.budget is None:
            axes.barh(row, shown, color="#9e9e9e", hatch="//")
            note = "no budget set"
        else:
            limit = shard.budget.epsilon
            color = "#c62828" if shard.budget_status == "exceeded" else "#1565c0"
            axes.barh(row, min(shown, limit), color=color)
            if shown < limit:
                axes.barh(row, limit - shown, left=shown, color="#c8e6c9")
            else:
                axes.barh(row, shown - limit, left=limit, color="#ef9a9a")
            note = f"{_fmt(spent)} of {limit:.3g}"
        if math.isinf(spent):
            note = "∞: non-private" + ("" if shard.budget is not None else ", no budget set")
        elif shard.budget is None:
            note = f"{_fmt(spent)}, no budget set"
        axes.text(shown, row, f"  {note}", va="center", fontsize=8)
    axes.set_yticks(range(len(shards)), labels)
    axes.invert_yaxis()
    axes.set_xlabel("epsilon (dark: spent, light green: remaining, red: over budget)")
    axes.set_xlim(0, finite_max * 1.45)
    axes.set_title("Spent and remaining budget per shard")
    return _png(figure)


def _fmt(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.3g}"
