"""The HTML report's figures as inline SVG: epsilon against steps per shard, and each shard's budget.

Drawn with :mod:`privacy_accounting.svg` (no plotting library: see there why). Every mark has a hover
title with its figure, and each figure's description lists what it shows, for screen readers.
"""

from __future__ import annotations

import math
from typing import Sequence

from privacy_accounting.report_models import ShardEntry
from privacy_accounting.svg import (
    MUTED,
    PALETTE,
    Scale,
    esc,
    fit,
    grid_and_ticks,
    line,
    nice_ticks,
    rect,
    svg_open,
    text,
    text_width,
    tick_label,
)

Curve = tuple[list[str], list[tuple[int, float]], float | None, bool]

WIDTH = 720  # px of the figure's box; pages scale it down to fit (CSS max-width)
_TITLE_Y, _TOP, _RIGHT, _LEGEND_ROW = 16, 34, 20, 18
BUDGET_DASH = "6 4"
SPENT, OVER_SPENT, REMAINING, OVER = "#1565c0", "#c62828", "#c8e6c9", "#ef9a9a"
X_LABEL = "epsilon (dark: spent, light green: remaining, red: over budget)"


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


def _legend(entries: list[tuple[str, str]], left: float, right: float, top: float) -> tuple[list[str], float]:
    """Legend rows below the plot, wrapping at ``right``: (markup, height). An entry is (label, swatch markup
    drawn at x = 0..22, y = 0, to be translated into place)."""
    parts, x, y = [], left, top
    for label, swatch in entries:
        shown = fit(label, 11, right - left - 30)
        width = 28 + text_width(shown, 11) + 18
        if x > left and x + width > right:
            x, y = left, y + _LEGEND_ROW
        entry = text(28, 0, shown, size=11, tooltip=label if shown != label else "")
        parts.append(f'<g transform="translate({x:.1f} {y:.1f})">{swatch}{entry}</g>')
        x += width
    return parts, y - top + _LEGEND_ROW


def epsilon_curve_svg(shards: Sequence[ShardEntry]) -> str | None:
    """Epsilon of each shard's composition against cumulative steps, budgets dashed; None if no curve.

    Every legend entry is a drawn line: shards with identical curves share one, shards with no finite
    epsilon (non-private runs only) are left out (the caller says so), budgets share one entry."""
    curves = drawable_curves(shards)
    if not curves:
        return None
    budgets = list(dict.fromkeys(b for _, _, b, _ in curves if b is not None))
    x_ticks = nice_ticks(max(s for _, points, _, _ in curves for s, _ in points))
    y_ticks = nice_ticks(max([e for _, points, _, _ in curves for _, e in points] + budgets))
    left = 26 + max(text_width(tick_label(t), 11) for t in y_ticks) + 10
    bottom = _TOP + 250
    x = Scale(x_ticks[-1], left, WIDTH - _RIGHT)
    y = Scale(y_ticks[-1], bottom, _TOP)
    body = [*grid_and_ticks(x, x_ticks, (_TOP, bottom), vertical=True),
            *grid_and_ticks(y, y_ticks, (left, WIDTH - _RIGHT), vertical=False),
            line(left, bottom, WIDTH - _RIGHT, bottom, MUTED), line(left, _TOP, left, bottom, MUTED)]
    legend: list[tuple[str, str]] = []
    lines, marks = [], []
    for index, (labels, points, _, turns) in enumerate(curves):
        color = PALETTE[index % len(PALETTE)]
        label = ", ".join(labels) + (" (then non-private: ∞)" if turns else "")
        # earlier lines wider, so that a line another overlays stays visible (at most 9 px)
        width = 1.5 + 1.5 * min(len(curves) - 1 - index, 5)
        coordinates = " ".join(f"{x(s):.2f},{y(e):.2f}" for s, e in points)
        lines.append(f'<polyline points="{coordinates}" fill="none" stroke="{color}" stroke-width="{width:g}" '
                     'stroke-linejoin="round"/>')
        radius = (2 + width) / 2
        marks += [f'<circle cx="{x(s):.2f}" cy="{y(e):.2f}" r="{radius:g}" fill="{color}">'
                  f"<title>{esc(label)}: {s} steps, ε = {e:.3g}</title></circle>" for s, e in points]
        legend.append((label, line(0, 0, 22, 0, color, width) + f'<circle cx="11" cy="0" r="{radius:g}" '
                       f'fill="{color}"/>'))
    for budget in budgets:
        body.append(line(left, y(budget), WIDTH - _RIGHT, y(budget), MUTED, 1.2, BUDGET_DASH))
    if budgets:
        legend.append(("budget", line(0, 0, 22, 0, MUTED, 1.2, BUDGET_DASH)))
    entries, legend_height = _legend(legend, left, WIDTH - _RIGHT, bottom + 54)
    height = bottom + 54 + legend_height
    description = "; ".join(f"{', '.join(labels)}: ε {points[-1][1]:.3g} after {points[-1][0]} steps"
                            for labels, points, _, _ in curves)
    if budgets:
        description += "; budget " + ", ".join(f"{b:g}" for b in budgets)
    return "".join([
        svg_open(WIDTH, height, "dpt-curves", "Epsilon against steps per shard", description),
        text(WIDTH / 2, _TITLE_Y, "Epsilon against steps per shard (dashed: budget)", size=14, anchor="middle",
             weight="600"),
        *body, *lines, *marks,
        text((left + WIDTH - _RIGHT) / 2, bottom + 32, "cumulative steps on the shard", size=12, anchor="middle"),
        text(12, (_TOP + bottom) / 2, "epsilon (upper bound)", size=12, anchor="middle", rotate=True),
        *entries, "</svg>"])


def _bar(shard: ShardEntry, shown: float) -> tuple[list[tuple[float, float, str, str]], str]:
    """A shard's bar as (from, to, fill, hover text) segments, and the note written after it."""
    spent, name = shard.spent.epsilon, f"{shard.data_source}/{shard.shard}"
    if shard.budget is None:
        note = "∞: non-private, no budget set" if math.isinf(spent) else f"{_fmt(spent)}, no budget set"
        return [(0.0, shown, "url(#dpt-bars-hatch)", f"{name}: spent {_fmt(spent)}, no budget set")], note
    limit = shard.budget.epsilon
    color = OVER_SPENT if shard.budget_status == "exceeded" else SPENT
    segments = [(0.0, min(shown, limit), color, f"{name}: spent {_fmt(spent)} of {limit:.3g}")]
    if shown < limit:
        segments.append((shown, limit, REMAINING, f"{name}: {limit - spent:.3g} remaining"))
    elif shown > limit:
        segments.append((limit, shown, OVER, f"{name}: over the budget of {limit:.3g}"))
    return segments, "∞: non-private" if math.isinf(spent) else f"{_fmt(spent)} of {limit:.3g}"


def budget_bars_svg(shards: Sequence[ShardEntry]) -> str | None:
    """Horizontal spent/remaining bar per shard; a shard without budget shows spent only, hatched; None if no
    shard. A non-private shard's bar reaches past every finite figure (its epsilon is infinite)."""
    if not shards:
        return None
    finite_max = max([s.spent.epsilon for s in shards if math.isfinite(s.spent.epsilon)]
                     + [s.budget.epsilon for s in shards if s.budget is not None] + [1e-9])
    bars = []
    for shard in shards:
        spent = shard.spent.epsilon
        shown = spent if math.isfinite(spent) else finite_max * 1.1
        segments, note = _bar(shard, shown)
        bars.append((f"{shard.data_source}/{shard.shard}", segments, note))
    ticks = nice_ticks(max(end for _, segments, _ in bars for _, end, _, _ in segments))
    label_width = min(max(text_width(label, 12) for label, _, _ in bars), 260.0)
    left = 12 + label_width + 8
    # The plot as wide as the box allows with every note after its bar; a wider box where it would be narrow.
    room = [(WIDTH - 8 - left - 6 - text_width(note, 11), segments[-1][1] / ticks[-1]) for _, segments, note in bars]
    plot = min([WIDTH - _RIGHT - left] + [free / share for free, share in room if share > 0])
    plot = max(plot, 240.0)
    width = max(WIDTH, max(left + plot * share + 6 + text_width(note, 11) + 8
                           for (_, segments, note), (_, share) in zip(bars, room)))
    bottom = _TOP + 26 * len(bars)
    x = Scale(ticks[-1], left, left + plot)
    parts = [*grid_and_ticks(x, ticks, (_TOP, bottom), vertical=True), line(left, _TOP, left, bottom, MUTED)]
    for row, (label, segments, note) in enumerate(bars):
        middle = _TOP + 26 * row + 13
        parts.append(text(left - 8, middle, fit(label, 12, label_width), anchor="end", tooltip=label))
        parts += [rect(x(start), middle - 8, x(end) - x(start), 16, fill, hover)
                  for start, end, fill, hover in segments]
        parts.append(text(x(segments[-1][1]) + 6, middle, note, size=11))
    description = "; ".join(f"{label}: {note}" for label, _, note in bars)
    return "".join([
        svg_open(width, bottom + 48, "dpt-bars", "Spent and remaining budget per shard", description),
        '<defs><pattern id="dpt-bars-hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
        f'patternTransform="rotate(45)"><rect width="6" height="6" fill="#bdbdbd"/>'
        f'<line x1="0" y1="0" x2="0" y2="6" stroke="{MUTED}" stroke-width="2"/></pattern></defs>',
        text(width / 2, _TITLE_Y, "Spent and remaining budget per shard", size=14, anchor="middle", weight="600"),
        *parts,
        text(max(left + plot / 2, text_width(X_LABEL, 12) / 2 + 4), bottom + 32, X_LABEL, size=12, anchor="middle"),
        "</svg>"])


def _fmt(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.3g}"

