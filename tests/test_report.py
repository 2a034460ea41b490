"""collab-eval report and check on hand-made records: curves, escaping, the regression gate."""
import json
import math
import re

import pytest

from collab_eval import cli
from collab_eval.analysis.runs import find_runs
from collab_eval.analysis.summary import summarise
from tests.report_records import POPE, POPE_CASE, TEXTVQA, pope_records, record, textvqa_records, write_run


@pytest.fixture(scope="module")
def baseline_dir(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("baseline"), pope_records() + textvqa_records())


@pytest.fixture(scope="module")
def baseline_report(baseline_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    assert cli.main(["report", str(baseline_dir), "--out", str(out)]) == 0
    return out


def curve_tuples(points):
    return [(p.get("tau"), p["rate"], p["bytes"], p["flops"], p["accuracy"]) for p in points]


def test_curves_from_records_scored_by_the_tasks_own_metric(baseline_report):
    summary = json.loads((baseline_report / "summary.json").read_text())
    pope = summary["systems"]["hand-llava:png"]["tasks"][POPE]
    assert pope["metric"] == "pope_accuracy" and pope["n"] == 4
    # The hand case of test_curves, reached through POPE's own scoring of the answers.
    assert curve_tuples(pope["curves"]["gated"]) == [
        ("inf", 0.0, 100.0, 10.0, 0.25), (2.0, 0.25, 175.0, 15.0, 0.5), (1.0, 0.5, 225.0, 20.0, 0.25),
        (0.5, 0.75, 275.0, 25.0, 0.25), ("-inf", 1.0, 300.0, 30.0, 0.5)]
    assert (pope["never"]["accuracy"], pope["always"]["accuracy"], pope["oracle"]["accuracy"]) == (0.25, 0.5, 0.75)
    half = next(p for p in pope["curves"]["random"] if p["rate"] == 0.5)
    assert (half["accuracy"], half["bytes"]) == (0.375, 200.0)
    assert pope["auroc"]["max"] == pytest.approx(1 / 3)  # wrong: +inf, 1.0, 0.5; right: 2.0
    # 99% of always (0.495) is first reached at tau = 2.0, for 175 bytes instead of 300 or 1000.
    reach = pope["reach_target"]["gated"]
    assert (reach["tau"], reach["bytes"]) == (2.0, 175.0)
    assert reach["saving_vs_always"] == pytest.approx(1 - 175 / 300)
    assert reach["saving_vs_original"] == pytest.approx(1 - 175 / 1000)
    textvqa = summary["systems"]["hand-llava:png"]["tasks"][TEXTVQA]
    assert textvqa["metric"] == "exact_match"
    assert (textvqa["never"]["accuracy"], textvqa["always"]["accuracy"]) == pytest.approx((0.65, 0.65))
    assert textvqa["oracle"]["accuracy"] == pytest.approx(1.0)


def test_report_files(baseline_report):
    names = {p.name for p in baseline_report.iterdir()}
    assert {"report.md", "report.html", "summary.json", f"{POPE}_tradeoff.png", f"{POPE}_uncertainty.png"} <= names
    assert (baseline_report / f"{POPE}_tradeoff.png").read_bytes().startswith(b"\x89PNG")
    html = (baseline_report / "report.html").read_text()
    # Self-contained: every image, script and style the page loads is inside it (the markup's
    # attributes as an HTML parser reads them; scripts' text, e.g. plotly's own code, is not markup).
    loads = loaded_sources(html)
    assert loads["img"] and all(s.startswith("data:image/png;base64,") for s in loads["img"])
    assert not loads["script"] and not loads["link"] and not loads["iframe"]
    md = (baseline_report / "report.md").read_text()
    assert f"]({POPE}_tradeoff.png)" in md


def loaded_sources(html: str) -> dict[str, list[str]]:
    """The src (href for link) of each img, script, link and iframe tag of the page's markup."""
    from html.parser import HTMLParser

    found = {"img": [], "script": [], "link": [], "iframe": []}

    class Tags(HTMLParser):
        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            source = attrs.get("href" if tag == "link" else "src")
            if tag in found and source is not None:
                found[tag].append(source)

    Tags().feed(html)
    return found


HOSTILE = ['<script>alert("x")</script>', '<img src=x onerror=alert(1)>', '"><iframe src=//evil>',
           "a|b\n# not a heading"]


def test_hostile_model_output_is_escaped(tmp_path):
    case = [("yes", HOSTILE[0], HOSTILE[1], 1.0, 300), ("no", HOSTILE[2], HOSTILE[3], 2.0, 300)]
    records = pope_records(case, model="/ckpt/<b>evil</b>")
    records[0]["doc"]["question"] = "</td></table><script>steal()</script>"
    out = tmp_path / "report"
    assert cli.main(["report", str(write_run(tmp_path / "run", records)), "--out", str(out)]) == 0
    html = (out / "report.html").read_text()
    # The page has its own scripts (the curves, the sample browser); none of the hostile text is markup.
    for raw in ("<script>alert", "<script>steal", "<img src=x", "<iframe", "<b>evil", "</table><script"):
        assert raw not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "a|b⏎# not a heading" in html
    md = (out / "report.md").read_text()
    for raw in ("<script", "<img src=x", "<iframe", "<b>evil"):
        assert raw not in md
    assert "\n# not a heading" not in md and "a\\|b⏎\\# not a heading" in md


def check(run, baseline, *extra):
    return cli.main(["check", str(run), "--baseline", str(baseline), *extra])


def test_check_passes_on_the_baseline_itself(baseline_dir, baseline_report, capsys):
    baseline = baseline_report / "summary.json"
    assert check(baseline_dir, baseline) == 0
    assert check(baseline, baseline) == 0
    out = capsys.readouterr().out
    assert "no regression" in out and "REGRESSION" not in out


def test_check_fails_on_a_planted_accuracy_regression(baseline_report, tmp_path, capsys):
    case = list(POPE_CASE)
    case[2] = ("yes", "", "no", None, 400)  # stage 2 no longer fixes the empty answer
    run = write_run(tmp_path, pope_records(case) + textvqa_records())
    assert check(run, baseline_report / "summary.json") == 1
    out = capsys.readouterr().out
    assert re.search(r"REGRESSION\s+hand-llava:png\s+collab_pope_mini\s+mean accuracy over 100–300 bytes", out)
    assert "collab_textvqa_mini" in out and not re.search(r"REGRESSION\s+\S+\s+collab_textvqa_mini", out)
    # A looser tolerance lets the same run through.
    assert check(run, baseline_report / "summary.json", "--tol-auc", "0.5", "--tol-acc", "0.5") == 0


def test_check_fails_when_bytes_grow(baseline_report, tmp_path, capsys):
    run = write_run(tmp_path, pope_records(bytes_global=110) + textvqa_records())
    assert check(run, baseline_report / "summary.json") == 1
    assert re.search(r"REGRESSION\s+hand-llava:png\s+collab_pope_mini\s+never: mean bytes", capsys.readouterr().out)


def test_check_says_not_comparable_when_a_task_is_missing(baseline_report, tmp_path, capsys):
    run = write_run(tmp_path, pope_records())
    assert check(run, baseline_report / "summary.json") == 2
    out = capsys.readouterr().out
    assert "not comparable" in out and "REGRESSION" not in out
    assert "- hand-llava:png / collab_textvqa_mini: in the baseline (2 samples), not in the run" in out
    # Asked for explicitly, the run is compared on the task it has.
    assert check(run, baseline_report / "summary.json", "--allow-subset") == 0
    out = capsys.readouterr().out
    assert "collab_textvqa_mini: in the baseline (2 samples), not in the run" in out and "no regression" in out


def test_other_policy_runs_are_points_with_the_value_derived_from_always(baseline_dir, tmp_path):
    # A threshold run at tau = 1.0 as the adapter would have written it, and an unknown policy.
    threshold = [record(r["task"], r["doc_id"], r["doc"], r["answer_stage1"],
                        r["answer_stage2"] if (math.inf if r["score"] is None else r["score"]) > 1.0 else None,
                        r["score"], r["bytes_total"] if (r["score"] is None or r["score"] > 1.0) else 100,
                        policy="threshold") for r in pope_records()]
    tiles = [{**r, "policy": "tiles"} for r in pope_records()]
    write_run(tmp_path / "threshold", threshold, "collab_llava-20260101T000100")
    write_run(tmp_path / "tiles", tiles, "collab_llava-20260101T000200")
    runs = [*find_runs(baseline_dir), *find_runs(tmp_path / "threshold"), *find_runs(tmp_path / "tiles")]
    # Records alone do not say tau: it comes from results.json's model_args, given here by hand.
    runs[1].results = {"config": {"model": "collab_llava", "model_args": "pretrained=x,policy=threshold,threshold=1.0"}}
    summary = summarise(runs, seeds=0)
    points = {p.policy: p for p in summary.systems["hand-llava:png"].tasks[POPE].points}
    assert set(points) == {"threshold", "tiles"}
    t = points["threshold"]
    assert t.label == "threshold τ=1 (max)"
    assert (t.point.accuracy, t.point.bytes, t.point.rate) == (0.25, 225.0, 0.5)
    assert t.derived_from_always == t.point
    assert points["tiles"].derived_from_always is None and points["tiles"].point.accuracy == 0.5


def test_always_runs_split_by_task_are_one_system_and_a_repeat_gets_its_own_curves(tmp_path):
    write_run(tmp_path / "a", pope_records(), "collab_llava-20260101T000000")
    write_run(tmp_path / "b", textvqa_records(), "collab_llava-20260101T000100")
    write_run(tmp_path / "c", pope_records(), "collab_llava-20260101T000200")
    runs = [run for d in ("a", "b", "c") for run in find_runs(tmp_path / d)]
    systems = summarise(runs, seeds=0).systems
    assert set(systems) == {"hand-llava:png", "hand-llava:png #2"}  # named by settings, never by run id
    assert set(systems["hand-llava:png"].tasks) == {POPE, TEXTVQA}
    assert set(systems["hand-llava:png #2"].tasks) == {POPE}
    assert systems["hand-llava:png #2"].always_runs == ["collab_llava-20260101T000200"]


def test_failed_samples_score_as_wrong_and_count(tmp_path):
    records = pope_records()
    records[0].update(answer_stage1=None, answer_stage2=None, answer="", score=None, scores={},
                      error="UnidentifiedImageError: cannot identify image file")
    summary = summarise(find_runs(write_run(tmp_path, records)), seeds=0)
    entry = summary.systems["hand-llava:png"].tasks[POPE].from_always
    assert entry.errors == 1
    assert entry.never.accuracy == 0.0  # sample 0 was the only right stage-1 answer
    assert entry.curves.gated[0].tau == math.inf


def test_a_results_json_finds_its_own_records_in_a_shared_records_dir(tmp_path):
    shared = tmp_path / "shared"
    write_run(shared, pope_records(), "collab_llava-20260101T000005")  # this run: 08:00:05 in Singapore
    write_run(shared, pope_records(), "collab_llava-20260101T050000")  # a later always run
    write_run(shared, pope_records(policy="never"), "collab_llava-20260101T000004")  # another policy
    out = tmp_path / "out" / "collab_llava"
    out.mkdir(parents=True)
    (out / "20260101_080000_results.json").write_text(json.dumps({
        "date": "20260101_080000", "results": {POPE: {}},
        "config": {"model": "collab_llava",
                   "model_args": f"pretrained=x,policy=always,records_dir={shared / 'records'}",
                   "resolved_cli_args": {"timezone": "Asia/Singapore"}}}))
    (run,) = find_runs(tmp_path / "out")
    assert run.name == "collab_llava-20260101T000005" and run.policy == "always" and run.adapter == "collab_llava"


@pytest.mark.slow  # a second or more: the fast tier stays under a minute
def test_report_prints_the_headline_per_task(baseline_dir, tmp_path, capsys):
    assert cli.main(["report", str(baseline_dir), "--out", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    paths, headline = out.split("\n\n", 1)
    assert paths.splitlines()[-1].endswith("summary.json")
    rows = {line.split()[0]: line.split("  ") for line in headline.splitlines()[2:]}
    pope = [cell.strip() for cell in rows[POPE] if cell.strip()]
    # The hand case: never 25% at 100 B, always 50% at 300 B; 99% of always first reached at tau = 2.0
    # with one sample of four retransmitted, 175 B: 41.7% fewer bytes and 50% fewer FLOPs than always,
    # 82.5% fewer bytes than the original image.
    assert pope == [POPE, "pope_accuracy", "hand-llava", "4", "25.0% / 100", "50.0% / 300",
                    "τ=2 / 25.0% / 50.0% / 175", "+41.7%", "+50.0%", "+82.5%"]
    assert "gate reaching 99% of always" in headline.splitlines()[0]
    assert TEXTVQA in rows
    assert "## Headline" in (tmp_path / "report" / "report.md").read_text()
