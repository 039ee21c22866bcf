"""The HTML report's figures as inline SVG: epsilon against steps per shard, and each shard's budget.

Drawn with :mod:`privacy_accounting.svg` (no plotting library: see there why). Every mark has a hover
title with its figure, and each figure's description lists what it shows, for screen readers.
"""

from __future__ import annotations

import math
from typing import Sequence

from privacy_accounting.figures import fmt_eps, fmt_remaining, fmt_set
from privacy_accounting.report_models import ShardEntry
from privacy_accounting.svg import (
    DASHES,
    INK,
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
    tick_labels,
)

Curve = tuple[list[str], list[tuple[int, float]], float | None, bool]

WIDTH = 720  # px of the figure's box; pages scale it down to fit (CSS max-width)
_TITLE_Y, _TOP, _RIGHT, _LEGEND_ROW = 16, 34, 20, 18
BUDGET_DASH = "6 4"
SPENT, OVER_SPENT, REMAINING, OVER = "#1565c0", "#c62828", "#c8e6c9", "#ef9a9a"
# The pale segments are outlined in a darker shade: their fills alone stand out from white by 1.3:1 and 2.2:1,
# their outlines by 5.1:1 and 5.6:1 (WCAG's 3:1 for graphics that carry meaning; tests/accounting/test_plots.py)
EDGES = {REMAINING: "#2e7d32", OVER: "#c62828"}
X_LABEL = "epsilon (dark: spent, light green: remaining, red: over budget; bar across: the budget)"


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


def _legend(entries: list[tuple[str, str, str]], left: float, right: float, top: float) -> tuple[list[str], float]:
    """Legend rows below the plot, wrapping at ``right``: (markup, height). An entry is (label, what its hover
    title names, swatch markup drawn at x = 0..22, y = 0, to be translated into place)."""
    parts, x, y = [], left, top
    for label, name, swatch in entries:
        shown = fit(label, 11, right - left - 30)
        width = 28 + text_width(shown, 11) + 18
        if x > left and x + width > right:
            x, y = left, y + _LEGEND_ROW
        entry = text(28, 0, shown, size=11, tooltip=name if shown != name else "")
        parts.append(f'<g transform="translate({x:.1f} {y:.1f})">{swatch}{entry}</g>')
        x += width
    return parts, y - top + _LEGEND_ROW


def _curve_label(labels: list[str], turns: bool, room: float) -> str:
    """A legend entry: every shard sharing the curve, or the first and how many more where they do not fit."""
    suffix = " (then non-private: ∞)" if turns else ""
    label = ", ".join(labels) + suffix
    if len(labels) > 1 and text_width(label, 11) > room:
        label = f"{labels[0]} and {len(labels) - 1} more with the same curve{suffix}"
    return label


def epsilon_curve_svg(shards: Sequence[ShardEntry]) -> str | None:
    """Epsilon of each shard's composition against cumulative steps, budgets dashed; None if no curve.

    Every legend entry is a drawn line: shards with identical curves share one, shards with no finite
    epsilon (non-private runs only) are left out (the caller says so), budgets share one entry. A line's
    colour repeats every 10 lines, with another dash pattern each time."""
    curves = drawable_curves(shards)
    if not curves:
        return None
    budgets = list(dict.fromkeys(b for _, _, b, _ in curves if b is not None))
    x_ticks = nice_ticks(max(s for _, points, _, _ in curves for s, _ in points))
    y_ticks = nice_ticks(max([e for _, points, _, _ in curves for _, e in points] + budgets))
    left = 26 + max(text_width(t, 11) for t in tick_labels(y_ticks)) + 10
    right = WIDTH - max(_RIGHT, text_width(tick_labels(x_ticks)[-1], 11) / 2 + 6)
    bottom = _TOP + 250
    x = Scale(x_ticks[-1], left, right)
    y = Scale(y_ticks[-1], bottom, _TOP)
    body = [*grid_and_ticks(x, x_ticks, (_TOP, bottom), vertical=True),
            *grid_and_ticks(y, y_ticks, (left, right), vertical=False),
            line(left, bottom, right, bottom, MUTED), line(left, _TOP, left, bottom, MUTED)]
    legend: list[tuple[str, str, str]] = []
    lines, marks = [], []
    for index, (labels, points, _, turns) in enumerate(curves):
        color, dash = PALETTE[index % len(PALETTE)], DASHES[index // len(PALETTE) % len(DASHES)]
        name = ", ".join(labels) + (" (then non-private: ∞)" if turns else "")
        # earlier lines wider, so that a line another overlays stays visible (at most 9 px)
        width = 1.5 + 1.5 * min(len(curves) - 1 - index, 5)
        coordinates = " ".join(f"{x(s):.2f},{y(e):.2f}" for s, e in points)
        dashes = f' stroke-dasharray="{dash}"' if dash else ""
        lines.append(f'<polyline points="{coordinates}" fill="none" stroke="{color}" stroke-width="{width:g}" '
                     f'stroke-linejoin="round"{dashes}/>')
        radius = (2 + width) / 2
        marks += [f'<circle cx="{x(s):.2f}" cy="{y(e):.2f}" r="{radius:g}" fill="{color}">'
                  f"<title>{esc(name)}: {s} steps, ε = {_fmt(e)}</title></circle>" for s, e in points]
        legend.append((_curve_label(labels, turns, right - left - 30), name,
                       line(0, 0, 22, 0, color, width, dash) + f'<circle cx="11" cy="0" r="{radius:g}" '
                       f'fill="{color}"/>'))
    for budget in budgets:
        body.append(line(left, y(budget), right, y(budget), MUTED, 1.2, BUDGET_DASH))
    if budgets:
        legend.append(("budget", "budget", line(0, 0, 22, 0, MUTED, 1.2, BUDGET_DASH)))
    entries, legend_height = _legend(legend, left, right, bottom + 54)
    height = bottom + 54 + legend_height
    description = "; ".join(f"{', '.join(labels)}: ε {_fmt(points[-1][1])} after {points[-1][0]} steps"
                            for labels, points, _, _ in curves)
    if budgets:
        description += "; budget " + ", ".join(f"{b:g}" for b in budgets)
    return "".join([
        svg_open(WIDTH, height, "dpt-curves", "Epsilon against steps per shard", description),
        text(WIDTH / 2, _TITLE_Y, "Epsilon against steps per shard (dashed: budget)", size=14, anchor="middle",
             weight="600"),
        *body, *lines, *marks,
        text((left + right) / 2, bottom + 32, "cumulative steps on the shard", size=12, anchor="middle"),
        text(12, (_TOP + bottom) / 2, "epsilon (upper bound)", size=12, anchor="middle", rotate=True),
        *entries, "</svg>"])


def _fmt(value: float, against: float | None = None) -> str:
    """``value`` to 4 significant digits, rounded up (an upper bound), or as many more as tell it from ``against``
    (3.0004 is not "3 of 3")."""
    if math.isinf(value):
        return "inf"
    digits = 4  # as the report's tables print it, rounded up (an upper bound)
    while (against is not None and value != against and fmt_eps(value, digits) == f"{against:.{digits}g}"
           and digits < 17):
        digits += 1
    return fmt_eps(value, digits)


def _bar(shard: ShardEntry, shown: float) -> tuple[list[tuple[float, float, str, str]], str]:
    """A shard's bar as (from, to, fill, hover text) segments, and the note written after it."""
    spent, name = shard.spent.epsilon, f"{shard.data_source}/{shard.shard}"
    if shard.budget is None:
        note = "∞: non-private, no budget set" if math.isinf(spent) else f"{_fmt(spent)}, no budget set"
        return [(0.0, shown, "url(#dpt-bars-hatch)", f"{name}: spent {_fmt(spent)}, no budget set")], note
    limit = shard.budget.epsilon
    color = OVER_SPENT if shard.budget_status == "exceeded" else SPENT
    spent_text = _fmt(spent, limit)
    segments = [(0.0, min(shown, limit), color, f"{name}: spent {spent_text} of {fmt_set(limit)}")]
    if shown < limit:
        segments.append((shown, limit, REMAINING, f"{name}: {fmt_remaining(limit, spent_text)} remaining"))
    elif shown > limit:
        segments.append((limit, shown, OVER, f"{name}: over the budget of {fmt_set(limit)}"))
    return segments, "∞: non-private" if math.isinf(spent) else f"{spent_text} of {fmt_set(limit)}"


def budget_bars_svg(shards: Sequence[ShardEntry]) -> str | None:
    """Horizontal spent/remaining bar per shard, a bar across it at the budget; a shard without budget shows spent
    only, hatched; None if no shard. A non-private shard's bar reaches past every finite figure (its epsilon is
    infinite). Shards are named as in the curves (with their data source where there are several)."""
    if not shards:
        return None
    finite = ([s.spent.epsilon for s in shards if math.isfinite(s.spent.epsilon)]
              + [s.budget.epsilon for s in shards if s.budget is not None])
    finite_max = max(finite) if finite and max(finite) > 0 else 1.0
    prefix = len({s.data_source for s in shards}) > 1
    bars = []
    for shard in shards:
        spent = shard.spent.epsilon
        shown = spent if math.isfinite(spent) else finite_max * 1.1
        segments, note = _bar(shard, shown)
        label = f"{shard.data_source}/{shard.shard}" if prefix else shard.shard
        limit = shard.budget.epsilon if shard.budget is not None else None
        bars.append((label, f"{shard.data_source}/{shard.shard}", segments, note, limit))
    ticks = nice_ticks(max(end for _, _, segments, _, _ in bars for _, end, _, _ in segments))
    last_tick = text_width(tick_labels(ticks)[-1], 11) / 2 + 6
    label_width = min(max(text_width(label, 12) for label, *_ in bars), 320.0)
    left = 12 + label_width + 8
    # The plot as wide as the box allows with every note after its bar; a wider box where it would be narrow.
    room = [(WIDTH - 8 - left - 6 - text_width(note, 11), segments[-1][1] / ticks[-1])
            for _, _, segments, note, _ in bars]
    plot = min([WIDTH - max(_RIGHT, last_tick) - left] + [free / share for free, share in room if share > 0])
    plot = max(plot, 240.0)
    width = max([WIDTH, left + plot + last_tick] + [left + plot * share + 6 + text_width(note, 11) + 8
                                                    for (_, _, _, note, _), (_, share) in zip(bars, room)])
    bottom = _TOP + 26 * len(bars)
    x = Scale(ticks[-1], left, left + plot)
    parts = [*grid_and_ticks(x, ticks, (_TOP, bottom), vertical=True), line(left, _TOP, left, bottom, MUTED)]
    for row, (label, name, segments, note, limit) in enumerate(bars):
        middle = _TOP + 26 * row + 13
        parts.append(text(left - 8, middle, fit(label, 12, label_width), anchor="end", tooltip=name))
        parts += [rect(x(start), middle - 8, x(end) - x(start), 16, fill, hover, edge=EDGES.get(fill))
                  for start, end, fill, hover in segments]
        if limit is not None:  # the budget, marked apart from the colours
            parts.append(line(x(limit), middle - 11, x(limit), middle + 11, INK, 2))
        parts.append(text(x(segments[-1][1]) + 6, middle, note, size=11))
    description = "; ".join(f"{name}: {note}" for _, name, _, note, _ in bars)
    return "".join([
        svg_open(width, bottom + 48, "dpt-bars", "Spent and remaining budget per shard", description),
        '<defs><pattern id="dpt-bars-hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
        f'patternTransform="rotate(45)"><rect width="6" height="6" fill="#bdbdbd"/>'
        f'<line x1="0" y1="0" x2="0" y2="6" stroke="{MUTED}" stroke-width="2"/></pattern></defs>',
        text(width / 2, _TITLE_Y, "Spent and remaining budget per shard", size=14, anchor="middle", weight="600"),
        *parts,
        text(max(left + plot / 2, text_width(X_LABEL, 12) / 2 + 4), bottom + 32, X_LABEL, size=12, anchor="middle"),
        "</svg>"])
