"""What the report's two figures are drawn with: linear axes, readable ticks and escaped text, as SVG markup.

The figures are small (a few lines or bars, a dozen points each) and must be ready in milliseconds:
``report -f html`` is to answer in under a second, and importing a plotting library took about half
of that here (matplotlib). The output is a pure function of its input (no random ids, no dates), so
the same ledger gives the same page. Text widths are estimated (:func:`text_width`), not measured:
no font is at hand; the estimate errs wide, and the browser test checks every text against its box."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Sequence

FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif"
#: Matplotlib's default cycle (tab10): distinct in colour and in lightness.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
INK, MUTED, GRID = "#1b1b1b", "#57606a", "#d0d7de"
#: Average advance of a character, as a fraction of the font size, wide enough for digits and capitals
#: of common sans-serif faces (their averages are 0.50-0.56).
_ADVANCE = 0.6


def esc(text: str) -> str:
    """Text or attribute value, escaped for XML (and so for HTML)."""
    return html.escape(text, quote=True)


def text_width(text: str, size: float) -> float:
    """Estimated width in px of ``text`` at font size ``size``: an upper estimate for Latin text."""
    return len(text) * size * _ADVANCE


def fit(text: str, size: float, width: float) -> str:
    """``text``, cut with an ellipsis so that its estimated width stays within ``width``."""
    if text_width(text, size) <= width:
        return text
    keep = max(1, int(width / (size * _ADVANCE)) - 1)
    return text[:keep] + "…"


def nice_ticks(high: float, count: int = 5) -> list[float]:
    """Ticks 0, s, 2s, ... up to the first >= ``high``, s = 1, 2, 2.5 or 5 times a power of ten, about
    ``count`` intervals."""
    if not math.isfinite(high) or high <= 0:
        high = 1.0
    raw = high / count
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    intervals = math.ceil(high / step - 1e-9)
    return [round(i * step, 12) for i in range(intervals + 1)]


def tick_label(value: float) -> str:
    """A tick value as people write it: 0, 0.25, 2, 1500, 2e+04."""
    return f"{value:.6g}" if abs(value) < 1e5 else f"{value:.3g}"


@dataclass(frozen=True)
class Scale:
    """The linear map from [0, high] to pixels [start, end] (end < start for a y axis, which grows upward)."""

    high: float
    start: float
    end: float

    def __call__(self, value: float) -> float:
        return round(self.start + (self.end - self.start) * value / self.high, 2)


def svg_open(width: float, height: float, label_id: str, title: str, description: str) -> str:
    """The root element, sized in px and scalable (viewBox), named for assistive technology."""
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
            f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-labelledby="{label_id}-t {label_id}-d" '
            f'font-family="{esc(FONT)}" font-size="12" fill="{INK}">'
            f'<title id="{label_id}-t">{esc(title)}</title><desc id="{label_id}-d">{esc(description)}</desc>'
            f'<rect width="100%" height="100%" fill="#ffffff"/>')


def text(x: float, y: float, content: str, *, size: float = 12, anchor: str = "start", weight: str = "",
         fill: str = "", rotate: bool = False, tooltip: str = "") -> str:
    """One line of text; ``y`` is its middle (dominant-baseline: central)."""
    attrs = f'x="{x:.1f}" y="{y:.1f}" font-size="{size:g}" dominant-baseline="central"'
    if anchor != "start":
        attrs += f' text-anchor="{anchor}"'
    if weight:
        attrs += f' font-weight="{weight}"'
    if fill:
        attrs += f' fill="{fill}"'
    if rotate:
        attrs += f' transform="rotate(-90 {x:.1f} {y:.1f})"'
    hover = f"<title>{esc(tooltip)}</title>" if tooltip else ""
    return f"<text {attrs}>{hover}{esc(content)}</text>"


def line(x1: float, y1: float, x2: float, y2: float, stroke: str, width: float = 1.0, dash: str = "") -> str:
    dashes = f' stroke-dasharray="{dash}"' if dash else ""
    return (f'<line x1="{x1:.2f}" y1="{y1:.2f}" x2="{x2:.2f}" y2="{y2:.2f}" stroke="{stroke}" '
            f'stroke-width="{width:g}"{dashes}/>')


def rect(x: float, y: float, width: float, height: float, fill: str, tooltip: str = "") -> str:
    attrs = f'x="{x:.2f}" y="{y:.2f}" width="{max(width, 0.0):.2f}" height="{height:.2f}" fill="{fill}"'
    return f"<rect {attrs}><title>{esc(tooltip)}</title></rect>" if tooltip else f"<rect {attrs}/>"


def grid_and_ticks(scale: Scale, ticks: Sequence[float], across: tuple[float, float], *, vertical: bool) -> list[str]:
    """Grid lines across the plot at each tick and the tick labels beside the axis: ``vertical`` for an
    x axis (labels below ``across[1]``), else a y axis (labels left of ``across[0]``)."""
    parts = []
    for value in ticks:
        at = scale(value)
        if vertical:
            parts.append(line(at, across[0], at, across[1], GRID))
            parts.append(text(at, across[1] + 11, tick_label(value), size=11, anchor="middle", fill=MUTED))
        else:
            parts.append(line(across[0], at, across[1], at, GRID))
            parts.append(text(across[0] - 6, at, tick_label(value), size=11, anchor="end", fill=MUTED))
    return parts
