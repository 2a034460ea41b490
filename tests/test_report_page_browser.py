"""report.html in a real headless Chromium (tests/browser.py): the committed example and a report
made here from fresh lmms-eval runs load without console errors; the sample browser's categories
hold the counts the records give; hovering a point of a curve shows the values summary.json has
for it; the RoI box is drawn where the record says; the locator's map recorded with
record_map=true is the one that chose the box."""
import json
from pathlib import Path

import numpy as np
import pytest

from collab_eval import cli
from collab_eval.analysis.browser import CATEGORIES
from collab_eval.analysis.scoring import Scorer
from collab_eval.roi import find_roi
from tests.browser import Browser, skip_reason
from tests.helpers import Spec, evaluate_many

pytestmark = [pytest.mark.slow, pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")]

EXAMPLE = Path(__file__).parent.parent / "reports" / "smalldetail-llava-browser"
TASKS = ("smalldetail_read", "smalldetail_exist")
LIMIT = 12


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """An always and a threshold run of smalldetail-llava with record_map=true (in one lmms-eval
    process: lmms-eval --config, tests/helpers.py evaluate_many), and their report."""
    tmp = tmp_path_factory.mktemp("fresh-page")
    specs = {policy.split(",")[0]: Spec(
        "collab_llava", f"pretrained=smalldetail-llava,policy={policy},record_map=true,"
                        f"records_dir={tmp / policy.split(',')[0] / 'records'}",
        ",".join(TASKS), tmp / policy.split(",")[0], options=("--limit", str(LIMIT)))
        for policy in ("always", "threshold,threshold=0.5")}
    runs = dict(zip(specs, evaluate_many(list(specs.values()))))
    report = tmp / "report"
    assert cli.main(["report", str(runs["always"].out), str(runs["threshold"].out), "--out", str(report),
                     "--link", "1mbit@50ms", "--browser-images", "3"]) == 0
    return runs, report


def expected_category(record: dict, scorer: Scorer) -> str:
    """The category by the rule the page states, computed here from the record and lmms-eval's scoring."""
    if record["error"]:
        return "failed"
    if not record["retransmitted"]:
        return "not_retransmitted"
    acc1 = scorer.accuracy(record["task"], record["doc"], record["answer_stage1"])
    acc2 = scorer.accuracy(record["task"], record["doc"], record["answer_stage2"])
    return "fixed" if acc2 > acc1 else "broken" if acc2 < acc1 else "unchanged"


SECTIONS = """Array.from(document.querySelectorAll('section.run')).map(s => ({
  key: s.dataset.key, task: s.dataset.task, run: s.dataset.run,
  counts: Object.fromEntries(Array.from(s.querySelectorAll('.cats button')).map(b => [b.dataset.category,
    +b.querySelector('.count').textContent]))}))"""


CARDS = """(key => Array.from(document.querySelector(`section.run[data-key="${key}"]`).querySelectorAll('article.card'))
  .map(c => ({
    doc_id: +c.dataset.docId, category: c.dataset.category,
    answer1: c.querySelector('dd.answer1').textContent, answer2: c.querySelector('dd.answer2').textContent,
    roi: c.querySelector('dd.roi').textContent,
    rect: (r => r && ['x', 'y', 'width', 'height'].map(a => +r.getAttribute(a)))(
      c.querySelector('svg.original rect.roi')),
    viewBox: (s => s && s.getAttribute('viewBox'))(c.querySelector('svg.original')),
    grid: (m => m && m.dataset.grid)(c.querySelector('svg.with-map image.map')),
    verified: !!c.querySelector('img.global') && c.textContent.includes('(verified')})))"""
NEXT_PAGE = """(key => {
  const b = document.querySelector(`section.run[data-key="${key}"]`).querySelectorAll('.pager button')[1];
  if (!b || b.disabled) return false; b.click(); return true; })"""


def show_category(browser: Browser, key: str, category: str) -> list[dict]:
    """Choose the run and the category in the page as a user does; the cards it then shows, all pages."""
    k = json.dumps(key)
    browser.js(f"(() => {{ const s = document.getElementById('run-select'); s.value = {k};"
               "s.dispatchEvent(new Event('change')); })()")
    browser.js(f"document.querySelector(`section.run[data-key=\"${{{k}}}\"]`)"
               f".querySelector('button[data-category=\"{category}\"]').click()")
    cards = []
    while True:
        cards += browser.js(f"{CARDS}({k})")
        if not browser.js(f"{NEXT_PAGE}({k})"):
            return cards


def hover_gate_point(browser: Browser, task: str, index: int) -> str:
    """Zoom the task's bytes panel around the gate's point ``index`` (so no neighbour is nearer),
    move the mouse onto it, and read the hover label plotly draws."""
    plot = json.dumps("plot-" + task)
    browser.js(f"""(async () => {{ const gd = document.getElementById({plot}); gd.scrollIntoView();
      const t = gd.data.find(t => t.meta && t.meta.kind === 'gated' && t.xaxis === 'x');
      const x = t.x[{index}], y = t.y[{index}];
      const log = gd._fullLayout.xaxis.type === 'log';
      const d = Math.abs(x) * 0.001 + 1e-9;
      const range = log ? [Math.log10(x) - 0.001, Math.log10(x) + 0.001] : [x - d, x + d];
      await Plotly.relayout(gd, {{'xaxis.range': range, 'yaxis.range': [y - 0.05, y + 0.05]}}); }})()""")
    browser.settle(0.3)
    x, y = browser.js(f"""(() => {{ const gd = document.getElementById({plot});
      const t = gd.data.find(t => t.meta && t.meta.kind === 'gated' && t.xaxis === 'x');
      const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, r = gd.getBoundingClientRect();
      return [r.left + xa._offset + xa.d2p(t.x[{index}]), r.top + ya._offset + ya.d2p(t.y[{index}])]; }})()""")
    browser.move_mouse(x, y)
    browser.settle(0.4)
    return browser.js(f"document.getElementById({plot}).querySelector('.hoverlayer').textContent")


def check_hover(text: str, point: dict, latency: dict | None = None) -> None:
    from tests.test_report_page import parse_hover

    values = parse_hover(text)
    tau = point["tau"]
    assert values["tau"] == ({"inf": "+∞", "-inf": "−∞"}[tau] if isinstance(tau, str) else f"{tau:.6g}")
    assert values["rate"] == pytest.approx(100 * point["rate"], abs=0.005)
    assert values["accuracy"] == pytest.approx(100 * point["accuracy"], abs=0.0005)
    assert values["bytes"] == pytest.approx(point["bytes"], abs=0.05)
    assert values["gflops"] == pytest.approx(point["flops"] / 1e9, rel=1e-5)
    if latency is not None:
        assert f"mean {latency['mean']:.4f} s, p95 {latency['p95']:.4f} s" in text


def test_fresh_report_in_chromium(fresh):
    runs, report = fresh
    summary = json.loads((report / "summary.json").read_text())
    scorer = Scorer()
    by_run = {run.records[0]["run_id"]: run.records for run in runs.values()}
    pictured = 0
    with Browser() as browser:
        browser.open(report / "report.html", "#samples")
        browser.settle(0.5)
        sections = browser.js(SECTIONS)
        assert {(s["task"], s["run"]) for s in sections} == {(t, r) for t in TASKS for r in by_run}
        for section in sections:
            records = {r["doc_id"]: r for r in by_run[section["run"]] if r["task"] == section["task"]}
            expected = {d: expected_category(r, scorer) for d, r in records.items()}
            assert section["counts"] == {**{c: list(expected.values()).count(c) for c in CATEGORIES},
                                         "all": len(records)}
            for category in CATEGORIES:
                cards = show_category(browser, section["key"], category)
                assert sorted(c["doc_id"] for c in cards) == sorted(d for d, c in expected.items() if c == category)
                for card in cards:
                    r = records[card["doc_id"]]
                    assert card["answer1"] == r["answer_stage1"]
                    if r["retransmitted"]:
                        assert card["answer2"] == r["answer_stage2"]
                        assert card["roi"] == ", ".join(map(str, r["roi"]))
                    if card["rect"] is not None:  # pictures: the box in the original's own pixels
                        pictured += 1
                        x0, y0, x1, y1 = r["roi"]
                        assert card["rect"] == [x0, y0, x1 - x0, y1 - y0]
                        assert card["viewBox"] == f"0 0 {r['image_size'][0]} {r['image_size'][1]}"
                        assert card["verified"], card
                        assert card["grid"] == f"{len(r['roi_map'])}x{len(r['roi_map'][0])}"
        assert pictured > 0
        browser.open(report / "report.html")
        browser.settle(0.5)
        for task in TASKS:
            entry = summary["systems"]["smalldetail-llava:png"]["tasks"][task]
            gated = entry["curves"]["gated"]
            index = len(gated) // 2
            check_hover(hover_gate_point(browser, task, index), gated[index],
                        entry["latency"]["1mbit@50ms"]["gated"][index])
        assert browser.errors() == []


def test_recorded_map_chose_the_box(fresh):
    runs, _ = fresh
    mapped = [r for r in runs["always"].records if r["roi_map"] is not None]
    assert len(mapped) == len(runs["always"].records)
    assert all(r["roi_map"] is None for r in runs["threshold"].records if not r["retransmitted"])
    for r in mapped:
        grid = np.array(r["roi_map"])
        assert grid.ndim == 2 and grid.std() > 0
        side = r["global_sizes"][r["roi_image"] or 0][0]  # LLaVA: the encoder's square input side
        assert list(find_roi(grid, tuple(r["roi_map_region"]), tuple(r["image_size"]), side)) == r["roi"]


@pytest.mark.skipif(not (EXAMPLE / "report.html").exists(), reason="no committed example report")
def test_committed_example_in_chromium():
    """The committed example (its records are not committed: its counts are checked against its
    summary.json: fixed samples of the always run are the oracle's, the threshold run's retransmitted
    share is its point's rate)."""
    summary = json.loads((EXAMPLE / "summary.json").read_text())
    system = summary["systems"]["smalldetail-llava:png"]
    always = next(r["name"] for r in summary["runs"] if r["policy"] == "always")
    with Browser() as browser:
        browser.open(EXAMPLE / "report.html", "#samples")
        browser.settle(0.5)
        sections = browser.js(SECTIONS)
        assert len(sections) == 2 * len(TASKS)
        for section in sections:
            entry = system["tasks"][section["task"]]
            counts, n = section["counts"], entry["n"]
            assert sum(counts[c] for c in CATEGORIES) == counts["all"] == n
            if section["run"] == always:
                assert counts["not_retransmitted"] == 0
                assert counts["fixed"] == round(entry["oracle"]["rate"] * n)
            else:
                point = entry["points"][0]
                assert counts["not_retransmitted"] + counts["failed"] == round((1 - point["rate"]) * n)
            cards = show_category(browser, section["key"], "fixed")
            assert len(cards) == counts["fixed"]
            pictured = [c for c in cards if c["rect"] is not None]
            assert pictured and all(c["verified"] for c in pictured)
            for c in pictured:  # the box drawn is the one the card (the record) states
                x0, y0, x1, y1 = map(int, c["roi"].split(", "))
                assert c["rect"] == [x0, y0, x1 - x0, y1 - y0]
        browser.open(EXAMPLE / "report.html")
        browser.settle(0.5)
        for task in TASKS:
            gated = system["tasks"][task]["curves"]["gated"]
            reach = system["tasks"][task]["reach_target"]["gated"]
            index = next(i for i, p in enumerate(gated) if p["tau"] == reach["tau"])
            check_hover(hover_gate_point(browser, task, index), gated[index])
        assert browser.errors() == []
