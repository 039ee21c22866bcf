"""The HTML report in a real headless Chromium at a 1280-px window: no sideways scrolling, every section
there, the headline on the first screen; and a PDF through the browser's print.

Skipped, saying why, where no Chromium is installed (CI has none; Debian: ``apt-get install chromium``;
another binary: set ``DP_TANGENT_CHROMIUM``). The report is built from a ledger and hand-made
workspace sections (plain data, as ``build_report`` takes them) with long names, hashes and paths,
so the layout is tried harder than by the demo.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import dp_accounting
import pytest
from accounting.shard_entries import shard_entry

from privacy_accounting import Ledger, PrivacyReport, ReservationRequest, build_report, dp_sgd_event
from privacy_accounting.plots import budget_bars_svg, epsilon_curve_svg
from privacy_accounting.report_models import (
    AuditLogResult,
    DataSourceDetails,
    DeletionEntry,
    LogCheckpoint,
    ShardRecords,
    WorkspaceSections,
)

WIDTH = 1280
SECTIONS = ("summary", "data", "deletions", "audit", "specialists")
DELTA = 1e-5
LONG = "component-with-a-rather-long-descriptive-name-that-does-not-break-anywhere-" + "x" * 40
HASH = "ab" * 32
RUN = dp_sgd_event(1.1, 0.1, 50)  # one event for every shard: the accountants compute it once

#: Appended to a copy of the page only (the report itself has no script): measures the layout once
#: loaded and writes it into the DOM, which ``--dump-dom`` returns.
MEASURE = """<script>
window.addEventListener("load", () => {
  const doc = document.documentElement;
  const section = id => {
    const el = document.getElementById(id);
    if (!el) return null;
    const r = el.getBoundingClientRect();
    return {height: r.height, left: r.left, right: r.right, text: el.innerText.slice(0, 4000)};
  };
  const outside = [...document.body.querySelectorAll("*")]
    .filter(el => !el.closest(".table-wrap") && el.getBoundingClientRect().right > window.innerWidth + 0.5)
    .map(el => el.tagName + "." + el.className).slice(0, 20);
  const first = document.querySelector(".sentence");
  const out = {innerWidth: window.innerWidth, scrollWidth: doc.scrollWidth, bodyScrollWidth: document.body.scrollWidth,
               sections: Object.fromEntries(%s.map(id => [id, section(id)])), outside: outside,
               headline: first ? first.innerText : null,
               headlineTop: first ? first.getBoundingClientRect().top : null};
  const pre = document.createElement("pre");
  pre.id = "__measure";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>""" % json.dumps(list(SECTIONS))


def _chromium() -> str | None:
    given = os.environ.get("DP_TANGENT_CHROMIUM")
    if given:
        return given
    return next((path for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
                 if (path := shutil.which(name))), None)


BROWSER = _chromium()
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no headless Chromium installed (Debian: apt-get install "
                                "chromium; or set DP_TANGENT_CHROMIUM): browser layout not checked")


def _run(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [str(BROWSER), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--no-first-run", "--disable-extensions", f"--user-data-dir={tmp / 'profile'}",
               f"--window-size={WIDTH},900", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> PrivacyReport:
    ledger = Ledger.open(tmp_path_factory.mktemp("browser") / "ledger.sqlite")
    ledger.set_data_source("clinic-visits", description="Outpatient visit records of 2019-2023, one row per visit, "
                           "with a very long description that goes on to test how the page wraps long text " * 2)
    names = [f"shard-{k}-of-the-outpatient-visits" for k in range(5)]
    for k, shard in enumerate(names):
        ledger.set_budget("clinic-visits", shard, 12.0, DELTA)
    common = dict(data_source="clinic-visits", delta=DELTA, operator="dpo")
    ledger.reserve_all([ReservationRequest(shard=shard, event=RUN, purpose="training",
                                           component=f"{LONG}-{k}", records=frozenset(f"r{k}-{i}" for i in range(90)),
                                           **common) for k, shard in enumerate(names)])
    ledger.reserve(shard=names[1], event=RUN, purpose="retraining_after_deletion",
                   component=f"{LONG}-1.r1", **common)
    ledger.reserve(shard="public-split", event=dp_accounting.NonPrivateDpEvent(), purpose="non_private_baseline",
                   component="non-private-reference", **common)
    ledger.register_model("visits-model-with-a-long-name", [f"{LONG}-0", f"{LONG}-1.r1", *(f"{LONG}-{k}"
                                                                                            for k in range(2, 5))])
    ledger.record_audit(f"{LONG}-0", 0.3, DELTA, method="canary membership inference")
    deletions = [
        DeletionEntry(request_id=f"request-{k}-" + "y" * 30, received_at="2025-01-09T09:30:00+00:00",
                      regimes={"gdpr": "GDPR Art. 12(3)", "ccpa": "CCPA regulations (11 CCR 7021(b))"},
                      deadlines={"gdpr": "2025-02-09", "ccpa": "2025-02-22"}, due_by="2025-02-09",
                      status="open" if k else "completed", outcome="pending" if k else "deleted",
                      completed_at=None if k else "2025-01-20T10:00:00+00:00", on_time=None if k else True,
                      overdue=k == 1, days_left=-5 if k == 1 else (20 if k else None), records=1,
                      certificate=f"/srv/workspaces/clinic/certificates/request-{k}.txt",
                      certificate_href=f"../certificates/request-{k}.txt") for k in range(3)]
    audit = AuditLogResult(
        log="/srv/workspaces/clinic-visits-with-a-long-folder-name/" + "nested/" * 12 + "audit.log", verified=False,
        checked_at="2025-03-10T09:30:00+00:00", entries=123, head=HASH, merkle_root=HASH[::-1], artifacts_checked=40,
        problems=["entry 12: artifact components/" + LONG + ".safetensors: sha256 on disk differs from the logged one"],
        checkpoint=LogCheckpoint(origin="dp-tangent.workspace/" + "f" * 16, size=100, root=HASH,
                                 source="kept outside the workspace in /srv/keys/" + "z" * 80, extends=True,
                                 signature="verified"))
    sections = WorkspaceSections(
        workspace="/srv/workspaces/clinic", deletions=deletions, audit=audit,
        data=[DataSourceDetails(data_source="clinic-visits", loader="image_folder /srv/data/" + "w" * 90,
                                shards=[ShardRecords(data_source="clinic-visits", shard=s, records=90) for s in names]
                                + [ShardRecords(data_source="clinic-visits", shard="public-split", records=90,
                                                public=True)])])
    return build_report(ledger, workspace=sections, curve_points=3, title="Privacy report: clinic visits")


@pytest.fixture(scope="module")
def page(report: PrivacyReport, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("page") / "report.html"
    path.write_text(report.to_html())
    return path


def _measured(page: Path, script: str, element_id: str, tmp: Path) -> object:
    """What ``script``, appended to a copy of ``page``, wrote as JSON into ``<pre id=element_id>`` once loaded."""
    measured = tmp / "measured.html"
    measured.write_text(page.read_text().replace("</body>", script + "</body>"))
    result = _run(tmp, "--run-all-compositor-stages-before-draw", "--virtual-time-budget=10000",
                  "--dump-dom", measured.as_uri())
    found = re.search(rf'<pre id="{element_id}">(.*?)</pre>', result.stdout, re.S)
    assert found, f"no measurement in the dumped DOM (exit {result.returncode}): {result.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


def test_page_fits_1280_px_with_every_section(report: PrivacyReport, page: Path, tmp_path: Path) -> None:
    m = _measured(page, MEASURE, "__measure", tmp_path)
    assert m["innerWidth"] == WIDTH, m["innerWidth"]
    assert m["scrollWidth"] <= WIDTH and m["bodyScrollWidth"] <= WIDTH, (m["scrollWidth"], m["outside"])
    assert not m["outside"], m["outside"]  # only tables may scroll, inside their own box
    for section in SECTIONS:
        box = m["sections"][section]
        assert box is not None and box["height"] > 0 and box["right"] <= WIDTH, section
    assert m["headline"] == report.headlines[0].sentence and m["headlineTop"] < 900  # on the first screen
    texts = {k: v["text"] for k, v in m["sections"].items()}
    assert "Data source clinic-visits" in texts["data"] and "declared public" in texts["data"]
    assert "OVERDUE" in texts["deletions"] and "request-1-" in texts["deletions"]
    assert "FAILED" in texts["audit"] and HASH in texts["audit"].replace("\n", "")
    assert "NOT DIFFERENTIALLY PRIVATE" in texts["summary"]


def test_page_prints_to_pdf(page: Path, tmp_path: Path) -> None:
    pdf = tmp_path / "report.pdf"
    result = _run(tmp_path, "--no-pdf-header-footer", f"--print-to-pdf={pdf}", page.as_uri())
    assert pdf.is_file(), result.stderr[-2000:]
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF") and len(re.findall(rb"/Type\s*/Page\b", data)) >= 3
    assert re.search(rb"/MediaBox\s*\[\s*0 0 841", data)  # the wide tables' landscape A4 pages


#: Appended to a copy of the page: every text box of each figure, as the browser lays it out.
FIGURE_TEXTS = """<script>
window.addEventListener("load", () => {
  const rect = el => { const r = el.getBoundingClientRect();
                       return {left: r.left, right: r.right, top: r.top, bottom: r.bottom}; };
  const figures = [...document.querySelectorAll("figure svg")].map(svg => ({
    box: rect(svg), texts: [...svg.querySelectorAll("text")].map(t => ({text: t.textContent, ...rect(t)}))}));
  const pre = document.createElement("pre");
  pre.id = "__figures";
  pre.textContent = JSON.stringify(figures);
  document.body.appendChild(pre);
});
</script>"""


def _hard_figures(tmp: Path) -> Path:
    """The figures alone, for names and counts that strain their layout: capitals and wide letters, a long shared
    prefix, two data sources, 24 curves past 100,000 steps, a budget exceeded, a non-private shard."""
    shards = [shard_entry(f"MMWW-OUTPATIENT-VISITS-HOSPITAL-SHARD-{i:02d}", 0.5 + 0.25 * i, 5.0 if i % 3 else None,
                          [(0, 0.0), (60_000 + 9_000 * i, 0.5 + 0.25 * i)], data_source=("CLINIC", "WARD")[i % 2])
              for i in range(24)]
    shards.append(shard_entry("public", math.inf, None, [(0, 0.0)], data_source="WARD"))
    figures = "".join(f"<figure>{draw(shards)}</figure>" for draw in (budget_bars_svg, epsilon_curve_svg))
    path = tmp / "figures.html"
    path.write_text(f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"></head><body>{figures}</body></html>')
    return path


@pytest.mark.parametrize("which", ["report", "hard names and counts"])
def test_figures_keep_every_text_inside_and_apart(which: str, page: Path, tmp_path: Path) -> None:
    """Text widths in the figures are estimated, not measured (``privacy_accounting.svg``): in a real browser
    with a real font no label, tick, note or legend entry leaves its figure or runs into another."""
    figures = _measured(page if which == "report" else _hard_figures(tmp_path), FIGURE_TEXTS, "__figures", tmp_path)
    assert len(figures) == 2 and all(len(f["texts"]) > 10 for f in figures)
    for figure in figures:
        box, texts = figure["box"], figure["texts"]
        for t in texts:
            assert (t["left"] >= box["left"] - 0.5 and t["right"] <= box["right"] + 0.5
                    and t["top"] >= box["top"] - 0.5 and t["bottom"] <= box["bottom"] + 0.5), (t, box)
        for i, a in enumerate(texts):
            for b in texts[i + 1:]:
                across = min(a["right"], b["right"]) - max(a["left"], b["left"])
                down = min(a["bottom"], b["bottom"]) - max(a["top"], b["top"])
                assert across <= 0.5 or down <= 0.5, (a["text"], b["text"])
