"""The HTML report's SVG figures: well-formed, the same for the same ledger, and every mark where its figure puts it
(read back through the axes' own tick labels)."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import dp_accounting
import pytest

from accounting.shard_entries import shard_entry
from privacy_accounting import Ledger, PrivacyReport, build_report, dp_sgd_event
from privacy_accounting.plots import OVER_SPENT, SPENT, budget_bars_svg, drawable_curves, epsilon_curve_svg
from privacy_accounting.report_models import ShardEntry
from privacy_accounting.svg import esc, fit, nice_ticks, tick_labels
from privacy_accounting.figures import fmt_eps

DELTA = 1e-5
RUN = dp_sgd_event(1.2, 0.02, 100)
SVG = "{http://www.w3.org/2000/svg}"
ODD = "<b>odd & \"name\"</b>"  # a data source name is user text


def _ledger(path: Path) -> Ledger:
    ledger = Ledger.open(path)
    ledger.set_data_source(data_source="digits", unit="record")
    ledger.set_budget(data_source="digits", shard=None, epsilon=3.0, delta=DELTA)
    common = dict(data_source="digits", delta=DELTA, operator="alice", purpose="training")
    ledger.complete(ledger.reserve(shard="shard-0", event=RUN, component="c0", **common))
    ledger.reserve(shard="shard-0", event=dp_sgd_event(1.2, 0.02, 60), component="c0-v2", **common)
    ledger.reserve(shard="shard-1", event=RUN, component="c1", **common)
    ledger.reserve(shard="tight", event=dp_sgd_event(1.0, 0.02, 300), component="c2", **common)
    ledger.set_budget(data_source="digits", shard="tight", epsilon=1.0, delta=DELTA)  # lowered below what was spent
    ledger.set_data_source(data_source=ODD, unit="record")
    ledger.reserve(data_source=ODD, shard="s|0", event=RUN, delta=DELTA, purpose="training", operator="o",
                   component="c3")
    ledger.set_data_source(data_source="people", unit="user")
    ledger.reserve(data_source="people", shard="all", event=dp_accounting.NonPrivateDpEvent(), delta=DELTA,
                   purpose="non_private_baseline", operator="bob", component="baseline")
    return ledger


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> PrivacyReport:
    return build_report(_ledger(tmp_path_factory.mktemp("plots") / "ledger.sqlite"), curve_points=6)


def _label(element: ET.Element) -> str:
    """A text's own content (after its hover title, if it has one)."""
    hover = element.find(f"{SVG}title")
    return (hover.tail if hover is not None else element.text) or ""


def _axis(root: ET.Element, anchor: str) -> tuple[float, float]:
    """(offset, px per unit) of the axis whose tick labels have ``anchor`` (end: y, middle: x), fitted to them all."""
    ticks = []
    for element in root.iter(f"{SVG}text"):
        try:
            value = float(_label(element).replace(",", ""))
        except ValueError:
            continue
        if element.get("text-anchor") == anchor:
            ticks.append((value, float(element.get("y" if anchor == "end" else "x"))))
    assert len(ticks) >= 3, ticks
    (v0, p0), (v1, p1) = ticks[0], ticks[-1]
    slope = (p1 - p0) / (v1 - v0)
    for value, pixel in ticks:
        assert pixel == pytest.approx(p0 + slope * (value - v0), abs=0.06), (value, pixel)
    return p0 - slope * v0, slope


def _titled(root: ET.Element, tag: str) -> dict[str, ET.Element]:
    return {element.find(f"{SVG}title").text: element for element in root.iter(f"{SVG}{tag}")
            if element.find(f"{SVG}title") is not None}


def _shard(report: PrivacyReport, data_source: str, shard: str) -> ShardEntry:
    return next(s for s in report.shards if (s.data_source, s.shard) == (data_source, shard))


def test_every_point_of_every_curve_is_drawn_where_its_epsilon_is(report: PrivacyReport) -> None:
    root = ET.fromstring(epsilon_curve_svg(report.shards))
    (x0, dx), (y0, dy) = _axis(root, "middle"), _axis(root, "end")
    assert dx > 0 > dy  # steps grow to the right, epsilon upward
    points = _titled(root, "circle")  # the legend's swatches have no title
    expected = {f"{', '.join(labels)}{' (then non-private: ∞)' if turns else ''}: {steps} steps, ε = {fmt_eps(epsilon)}":
                (steps, epsilon) for labels, curve, _, turns in drawable_curves(report.shards)
                for steps, epsilon in curve}
    assert set(points) == set(expected) and len(expected) > 10
    for title, (steps, epsilon) in expected.items():
        assert float(points[title].get("cx")) == pytest.approx(x0 + dx * steps, abs=0.06)
        assert float(points[title].get("cy")) == pytest.approx(y0 + dy * epsilon, abs=0.06)
    lines = [[tuple(map(float, xy.split(","))) for xy in p.get("points").split()] for p in root.iter(f"{SVG}polyline")]
    assert lines == [[pytest.approx((x0 + dx * s, y0 + dy * e), abs=0.06) for s, e in curve]
                     for _, curve, _, _ in drawable_curves(report.shards)]  # each line through its points, in order
    budgets = [float(line.get("y1")) for line in root.iter(f"{SVG}line") if line.get("stroke-dasharray")
               and float(line.get("x2")) - float(line.get("x1")) > 100]
    assert sorted(budgets) == pytest.approx(sorted(y0 + dy * b for b in (1.0, 3.0)), abs=0.06)  # shard's and source's
    legend = {_label(t) for t in root.iter(f"{SVG}text")}
    assert {"shard-0", "shard-1", "tight", "s|0", "budget"} <= {name.split("/")[-1] for name in legend}
    assert not any("all" == name.split("/")[-1] for name in legend)  # the non-private shard: not drawn


def test_every_bar_is_as_long_as_its_figure(report: PrivacyReport) -> None:
    root = ET.fromstring(budget_bars_svg(report.shards))
    x0, dx = _axis(root, "middle")
    bars = _titled(root, "rect")
    markers = [m for m in root.iter(f"{SVG}line") if m.get("x1") == m.get("x2") and m.get("stroke-width") == "2"]
    for shard in report.shards:
        name, spent = f"{shard.data_source}/{shard.shard}", shard.spent.epsilon
        if shard.budget is None:
            bar = bars[f"{name}: spent {fmt_eps(spent)}, no budget set" if math.isfinite(spent)
                       else f"{name}: spent inf, no budget set"]
            assert bar.get("fill") == "url(#dpt-bars-hatch)"
            if math.isfinite(spent):
                assert float(bar.get("width")) == pytest.approx(dx * spent, abs=0.06)
            continue
        limit = shard.budget.epsilon
        [bar] = [r for title, r in bars.items() if title.startswith(f"{name}: spent ")]
        assert float(bar.get("x")) == pytest.approx(x0, abs=0.06)
        assert float(bar.get("width")) == pytest.approx(dx * min(spent, limit), abs=0.06)
        assert bar.get("fill") == (OVER_SPENT if shard.budget_status == "exceeded" else SPENT)
        rest = next(r for title, r in bars.items() if title.startswith(f"{name}: ") and r is not bar)
        end = float(rest.get("x")) + float(rest.get("width"))
        assert end == pytest.approx(x0 + dx * max(spent, limit), abs=0.06)  # remaining to the limit, or over it
        assert x0 + dx * limit in [pytest.approx(float(m.get("x1")), abs=0.06) for m in markers]  # the budget mark
    assert _shard(report, "digits", "tight").budget_status == "exceeded"
    widest_finite = max(float(r.get("width")) for t, r in bars.items() if "inf" not in t)
    assert float(bars["people/all: spent inf, no budget set"].get("width")) > widest_finite  # ∞ reaches furthest


def _luminance(colour: str) -> float:
    """WCAG 2 relative luminance of ``#rrggbb``."""
    channels = [int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def _contrast(a: str, b: str) -> float:
    light, dark = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def test_every_bar_stands_out_from_the_page_by_3_to_1(report: PrivacyReport) -> None:
    """WCAG 1.4.11: a graphic that carries meaning contrasts 3:1 with what surrounds it; a pale segment does so by
    its outline, the hatch (no budget) by its stripes."""
    root = ET.fromstring(budget_bars_svg(report.shards))
    [page] = [r for r in root.iter(f"{SVG}rect") if r.get("width") == "100%"]
    segments = [r for r in root.iter(f"{SVG}rect") if r.find(f"{SVG}title") is not None]
    fills = {r.get("fill") for r in segments}
    assert {"url(#dpt-bars-hatch)", OVER_SPENT, SPENT} <= fills and len(fills) == 5  # remaining and over, too
    for segment in segments:
        if segment.get("fill") == "url(#dpt-bars-hatch)":
            [stripe] = [line for line in root.iter(f"{SVG}line") if line.get("x1") == "0"]
            colours = [stripe.get("stroke")]
        else:
            colours = [segment.get("fill"), segment.get("stroke") or segment.get("fill")]
        best = max(_contrast(colour, page.get("fill")) for colour in colours)
        assert best >= 3.0, (segment.find(f"{SVG}title").text, best)


def test_figures_escape_user_text_and_are_the_same_for_the_same_ledger(report: PrivacyReport,
                                                                       tmp_path: Path) -> None:
    again = build_report(_ledger(tmp_path / "ledger.sqlite"), curve_points=6)
    for draw in (budget_bars_svg, epsilon_curve_svg):
        markup = draw(report.shards)
        assert markup == draw(again.shards)  # no random ids, no dates: the same page for the same ledger
        assert "<b>" not in markup and "<script" not in markup
        assert ODD in "".join(ET.fromstring(markup).itertext())  # parses, and reads back as written
    assert budget_bars_svg([]) is None


@pytest.mark.parametrize("high, expected, labels", [
    (1.0, [0, 0.2, 0.4, 0.6, 0.8, 1.0], ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]),
    (1953, [0, 500, 1000, 1500, 2000], ["0", "500", "1,000", "1,500", "2,000"]),
    (3.3, [0, 1, 2, 3, 4], ["0", "1", "2", "3", "4"]),
    (12.0, [0, 2.5, 5, 7.5, 10, 12.5], ["0.0", "2.5", "5.0", "7.5", "10.0", "12.5"]),
    (110_000, [0, 25_000, 50_000, 75_000, 100_000, 125_000],
     ["0", "25,000", "50,000", "75,000", "100,000", "125,000"]),  # one format on the axis (not 75000 and 1e+05)
    (0.0123, [0, 0.0025, 0.005, 0.0075, 0.01, 0.0125], ["0.0000", "0.0025", "0.0050", "0.0075", "0.0100", "0.0125"]),
    (7.5e-11, [0, 2e-11, 4e-11, 6e-11, 8e-11], ["0", "2e-11", "4e-11", "6e-11", "8e-11"]),
    (0.0, [0, 0.2, 0.4, 0.6, 0.8, 1.0], ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]),
    (5e-324, [0, 2e-13, 4e-13, 6e-13, 8e-13, 1e-12], ["0", "2e-13", "4e-13", "6e-13", "8e-13", "1e-12"]),
    (1.7e308, [0, 2e299, 4e299, 6e299, 8e299, 1e300], ["0", "2e+299", "4e+299", "6e+299", "8e+299", "1e+300"])])
def test_ticks_are_round_numbers_that_cover_the_data(high: float, expected: list[float], labels: list[str]) -> None:
    ticks = nice_ticks(high)
    assert ticks == pytest.approx(expected, rel=1e-12, abs=0) and len(set(ticks)) == len(ticks)
    assert ticks[-1] >= min(high, 1e300) and all(math.isfinite(t) for t in ticks)
    assert tick_labels(ticks) == labels


def test_bar_labels_that_share_a_long_prefix_stay_distinct() -> None:
    names = [f"outpatient-visits-2019-2023-hospital-shard-{i:02d}" for i in range(3)]
    root = ET.fromstring(budget_bars_svg([shard_entry(n, s, 3.0) for n, s in zip(names, (1.0, 3.4, 2.0))]))
    labels = [_label(t) for t in root.iter(f"{SVG}text") if t.get("text-anchor") == "end"]
    assert len(set(labels)) == 3 and all(label.endswith(f"-{i:02d}") for i, label in enumerate(labels))
    assert fit("WWWWWWWWWWWWWWWWWWWWWWWWW/MMMMM", 12, 200).endswith("MMMMM")


def test_a_figure_below_1e_12_or_with_an_unprintable_name_still_draws() -> None:
    for shards in ([shard_entry("a", 0.0, 1e-13)], [shard_entry("a", 1e-14, None, [(0, 0.0), (1, 1e-14)])],
                   [shard_entry("a\x0bb\x00", 0.5, 1.0, [(0, 0.0), (5, 0.5)])]):
        for draw in (budget_bars_svg, epsilon_curve_svg):
            markup = draw(shards)
            if markup is None:  # the curve of a shard that has run nothing
                continue
            root = ET.fromstring(markup)  # well-formed XML: the control characters are shown as U+FFFD
            assert all(math.isfinite(float(v)) for e in root.iter() for k, v in e.attrib.items()
                       if k in ("x", "y", "x1", "x2", "y1", "y2", "cx", "cy", "width") and not v.endswith("%"))
    assert esc("a\x0bb") == "a\ufffdb"


def test_an_overrun_that_rounding_would_hide_is_printed() -> None:
    root = ET.fromstring(budget_bars_svg([shard_entry("over", 3.0004, 3.0), shard_entry("under", 2.9996, 3.0)]))
    notes = {_label(t) for t in root.iter(f"{SVG}text")}
    assert {"3.001 of 3", "2.9997 of 3"} <= notes  # upper bounds rounded up, with the digits that tell them from 3


def test_more_lines_than_colours_still_look_different() -> None:
    shards = [shard_entry(f"shard-{i:02d}", 0.1 * (i + 1), None, [(0, 0.0), (10, 0.1 * (i + 1))]) for i in range(24)]
    root = ET.fromstring(epsilon_curve_svg(shards))
    looks = [(p.get("stroke"), p.get("stroke-dasharray"), p.get("stroke-width")) for p in root.iter(f"{SVG}polyline")]
    assert len(looks) == 24 and len(set(looks)) == 24
