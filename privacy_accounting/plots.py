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


def epsilon_curve_png(shards: Sequence[ShardEntry]) -> bytes | None:
    """Epsilon of each shard's composition against cumulative steps, budgets dashed; None if no curve."""
    from matplotlib.figure import Figure

    drawn = [s for s in shards if len(s.curve) > 1]
    if not drawn:
        return None
    figure = Figure(figsize=(7.0, 3.8))
    axes = figure.add_subplot(1, 1, 1)
    for index, shard in enumerate(drawn):
        color = f"C{index % 10}"
        points = [(p.steps, p.epsilon) for p in shard.curve if math.isfinite(p.epsilon)]
        label = f"{shard.data_source}/{shard.shard}"
        if len(points) < len(shard.curve):
            label += " (then non-private: inf)"
        axes.plot([x for x, _ in points], [y for _, y in points], marker="o", markersize=3, color=color, label=label)
        if shard.budget is not None:
            axes.axhline(shard.budget.epsilon, color=color, linestyle="--", linewidth=1)
    axes.set_xlabel("cumulative steps on the shard")
    axes.set_ylabel("epsilon (upper bound)")
    axes.set_title("Epsilon against steps per shard (dashed: budget)")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
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
        axes.text(shown, row, f"  {_fmt(spent) if shard.budget is None else ''} {note}", va="center", fontsize=8)
    axes.set_yticks(range(len(shards)), labels)
    axes.invert_yaxis()
    axes.set_xlabel("epsilon (dark: spent, light green: remaining, red: over budget)")
    axes.set_xlim(0, finite_max * 1.45)
    axes.set_title("Spent and remaining budget per shard")
    return _png(figure)


def _fmt(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.3g}"
