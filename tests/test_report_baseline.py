"""The HD baseline in a report: a checkpoint run with never only (LLaVA-NeXT, the released form of
the paper's LLaVA-1.5-HD; ``Family.never_label``) is a point labelled "HD baseline (never)" beside
the gate curves: in the headline, the trade-off figure's legend and every panel of the codec figure."""
import json

import pytest

from collab_eval import cli
from collab_eval.analysis import plots, study_figures
from collab_eval.analysis.runs import find_runs
from collab_eval.analysis.summary import Summary, summarise
from tests.report_records import POPE, POPE_CASE, pope_records, record, write_run

HD_RUN = "collab_llava_next-20260101T000200"  # the run id a collab_llava_next run starts with


def hd_records(**kw) -> list[dict]:
    """A never run of another checkpoint: one high-resolution image (900 bytes), one answer."""
    return [record(POPE, i, {"question_id": str(800000 + i), "question": f"Is there a thing {i}?", "answer": truth},
                   truth if i else "no", None, 0.1, 900, bytes_global=900, policy="never",
                   model="/ckpt/hand-llava-next", **kw) for i, (truth, *_) in enumerate(POPE_CASE)]


def write_study_like(tmp_path):
    write_run(tmp_path / "runs" / "png", pope_records(), "collab_llava-20260101T000000")
    write_run(tmp_path / "runs" / "jpeg", [r | {"codec": "jpeg:50"} for r in pope_records()],
              "collab_llava-20260101T000100")
    write_run(tmp_path / "runs" / "hd", hd_records(run_id=HD_RUN), HD_RUN)
    return tmp_path / "runs"


@pytest.mark.slow  # a second or more: the fast tier stays under a minute
def test_the_hd_baseline_is_a_labelled_point_in_the_report(tmp_path):
    runs = write_study_like(tmp_path)
    assert cli.main(["report", str(runs), "--out", str(tmp_path / "report")]) == 0
    summary = Summary.read(tmp_path / "report" / "summary.json")
    (point,) = summary.systems["hand-llava-next:png"].tasks[POPE].points
    assert (point.label, point.policy, point.point.accuracy, point.point.bytes) == (
        "HD baseline (never)", "never", 0.75, 900.0)
    assert [r["label"] for r in json.loads((tmp_path / "report" / "summary.json").read_text())["runs"]
            if r["name"] == HD_RUN] == ["HD baseline (never)"]
    md = (tmp_path / "report" / "report.md").read_text()
    # The headline gives it its never end, beside the gated checkpoint's rows.
    assert "| collab\\_pope\\_mini | pope\\_accuracy | hand-llava-next codec=png | 4 | 75.0% / 900 | " \
           "no always run: no curves |" in md, md[:3000]
    assert "| hand-llava-next codec=png | " + HD_RUN + " | HD baseline (never) | 0.0% | 900 |" in md.replace("\\_", "_")
    assert (tmp_path / "report" / f"{POPE}_codecs.png").exists()


def test_the_hd_baseline_is_named_in_the_tradeoff_legend_and_drawn_in_every_codec_panel(tmp_path):
    summary = summarise([run for run in find_runs(write_study_like(tmp_path))], seeds=0)
    entries = {name: s.tasks[POPE] for name, s in summary.systems.items()}
    legend = [t.get_text() for t in plots.tradeoff_figure(POPE, entries).legends[0].get_texts()]
    assert "hand-llava-next:png: HD baseline (never)" in legend, legend
    others = study_figures.baselines(summary, POPE)
    assert [(b.checkpoint, b.codec, b.run.label) for b in others] == [("hand-llava-next", "png", "HD baseline (never)")]
    figure = study_figures.codec_figure_of(POPE, {"hand-llava": study_figures.by_checkpoint(summary)[
        ("hand-llava", POPE)]}, 0.99, others)
    (panel,) = figure.axes
    assert "png: HD baseline (never) (hand-llava-next)" in [t.get_text() for t in panel.get_legend().get_texts()]


def test_a_never_run_of_a_family_without_a_never_label_stays_never(tmp_path):
    run = write_run(tmp_path, [r | {"run_id": "collab_llava-20260101T000300"} for r in hd_records()],
                    "collab_llava-20260101T000300")
    (point,) = summarise(find_runs(run), seeds=0).systems["hand-llava-next:png"].tasks[POPE].points
    assert point.label == "never"
