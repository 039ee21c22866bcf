"""What the report's two figures are drawn with: linear axes, readable ticks and escaped text, as SVG markup.

The figures are small (a few lines or bars, a dozen points each) and must be ready in milliseconds:
``report -f html`` is to answer in under a second, and importing a plotting library took about half
of that here (matplotlib). The output is a pure function of its input (no random ids, no dates), so
the same ledger gives the same page. Text widths are estimated (:func:`text_width`), not measured:
no font is at hand; the estimate errs wide, and the browser test checks every text against its box."""

from __future__ import annotations

import html
import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Sequence

FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif"
#: Matplotlib's default cycle (tab10): distinct in colour and in lightness.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
#: A line's dash pattern on each pass through the palette: 40 lines before two look alike.
DASHES = ("", "9 3", "2 3", "9 3 2 3")
INK, MUTED, GRID = "#1b1b1b", "#57606a", "#d0d7de"
#: What an axis spans at least and at most: a figure beyond is drawn at the axis's end (and printed as it is).
LOWEST, HIGHEST = 1e-12, 1e300
#: Characters XML 1.0 does not allow (a name may hold them): shown as U+FFFD.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def esc(text: str) -> str:
    """Text or attribute value, escaped for XML (and so for HTML); characters XML does not allow become U+FFFD."""
    return html.escape(_NOT_XML.sub("\ufffd", text), quote=True)


def _advance(char: str) -> float:
    """A character's advance as a fraction of the font size, at or above common sans-serif faces' (DejaVu,
    Segoe UI, Roboto): wide East Asian characters and emoji a full em, M and W nearly, capitals 0.75, the
    rest 0.6 (lower case and digits average 0.50-0.56)."""
    if unicodedata.east_asian_width(char) in ("W", "F") or ord(char) >= 0x1F000:
        return 1.0
    if char in "MWmw@%":
        return 0.95
    return 0.75 if char.isupper() else 0.6


def text_width(text: str, size: float) -> float:
    """Estimated width in px of ``text`` at font size ``size``: an upper estimate, not a measurement."""
    return size * sum(_advance(c) for c in text)


def fit(text: str, size: float, width: float) -> str:
    """``text``, or its start and end around an ellipsis so that its estimated width stays within ``width``:
    names that share a long prefix (``clinic-visits/shard-01``, ``-02``) still differ where they differ."""
    if text_width(text, size) <= width:
        return text
    room = width - size * _advance("…")
    head, tail, i, j = "", "", 0, len(text) - 1
    while i <= j:
        from_end = len(tail) <= len(head)  # the end first: where names built from one pattern differ
        char = text[j] if from_end else text[i]
        room -= size * _advance(char)
        if room < 0:
            break
        if from_end:
            tail, j = char + tail, j - 1
        else:
            head, i = head + char, i + 1
    return head + "…" + tail


def nice_ticks(high: float, count: int = 5) -> list[float]:
    """Ticks 0, s, 2s, ... up to the first >= ``high``, s = 1, 2, 2.5 or 5 times a power of ten, about ``count``
    intervals; ``high`` held within [LOWEST, HIGHEST] (not finite or not positive: 1)."""
    high = min(max(high, LOWEST), HIGHEST) if math.isfinite(high) and high > 0 else 1.0
    exponent = math.floor(math.log10(high / count))
    raw = high / count / 10.0 ** exponent  # in [1, 10), up to rounding
    mantissa = next(m for m in (1, 2, 2.5, 5, 10) if m >= raw * (1 - 1e-12))
    intervals = max(1, math.ceil(high / (mantissa * 10.0 ** exponent) * (1 - 1e-12)))
    return [float(f"{i * mantissa!r}e{exponent}") for i in range(intervals + 1)]  # decimal, no 0.30000000000000004


def tick_labels(ticks: Sequence[float]) -> list[str]:
    """One format for a whole axis: as many decimals as its ticks need (``0.0, 2.5, 5.0``), thousands grouped
    (``125,000``), scientific beyond 1e9 or below 1e-4."""
    top = max(ticks)
    if top >= 1e9 or top < 1e-4:
        return [f"{t:.3g}" if t else "0" for t in ticks]
    decimals = next(d for d in range(13) if all(abs(round(t, d) - t) <= 1e-9 * top for t in ticks))
    return [f"{t:,.{decimals}f}" for t in ticks]


@dataclass(frozen=True)
class Scale:
    """The linear map from [0, high] to pixels [start, end] (end < start for a y axis, which grows upward); a value
    beyond ``high`` is drawn at ``end``."""

    high: float
    start: float
    end: float

    def __call__(self, value: float) -> float:
        return round(self.start + (self.end - self.start) * min(max(value, 0.0), self.high) / self.high, 2)


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


def rect(x: float, y: float, width: float, height: float, fill: str, tooltip: str = "", edge: str | None = None,
         ) -> str:
    """A rectangle; ``edge``, if given, outlines it (1.5 px, centred on its border as SVG strokes are)."""
    attrs = f'x="{x:.2f}" y="{y:.2f}" width="{max(width, 0.0):.2f}" height="{height:.2f}" fill="{fill}"'
    if edge is not None:
        attrs += f' stroke="{edge}" stroke-width="1.5"'
    return f"<rect {attrs}><title>{esc(tooltip)}</title></rect>" if tooltip else f"<rect {attrs}/>"


def grid_and_ticks(scale: Scale, ticks: Sequence[float], across: tuple[float, float], *, vertical: bool) -> list[str]:
    """Grid lines across the plot at each tick and the tick labels beside the axis: ``vertical`` for an
    x axis (labels below ``across[1]``), else a y axis (labels left of ``across[0]``)."""
    parts = []
    for value, label in zip(ticks, tick_labels(ticks)):
        at = scale(value)
        if vertical:
            parts.append(line(at, across[0], at, across[1], GRID))
            parts.append(text(at, across[1] + 11, label, size=11, anchor="middle", fill=MUTED))
        else:
            parts.append(line(across[0], at, across[1], at, GRID))
            parts.append(text(across[0] - 6, at, label, size=11, anchor="end", fill=MUTED))
    return parts
