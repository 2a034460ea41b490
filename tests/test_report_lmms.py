"""collab-eval report on real lmms-eval runs of the tiny model: the report reads what the CLI
wrote, and a threshold run lands exactly on the point the always run predicts for its tau."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from collab_eval.analysis import curves
from collab_eval.analysis.runs import find_runs
from tests.helpers import MINI_LIMIT, check_run

TASK = "collab_textvqa_mini"
COLLAB_EVAL = str(Path(sys.executable).with_name("collab-eval"))

# Every test here starts lmms-eval: the fast tier (-m 'not slow') skips the module.
pytestmark = pytest.mark.slow


def report(run_dirs, out: Path) -> dict:
    proc = subprocess.run([COLLAB_EVAL, "report", *map(str, run_dirs), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "summary.json").read_text())


def test_report_from_a_real_always_run(tiny_llava_run, tmp_path):
    run = tiny_llava_run("policy=always")
    summary = report([run.out], tmp_path / "report")
    assert {p.name for p in (tmp_path / "report").iterdir()} >= {"report.md", "report.html", f"{TASK}_tradeoff.png"}
    entry = summary["systems"]["tiny-llava:png"]["tasks"][TASK]
    assert entry["n"] == MINI_LIMIT and entry["errors"] == 0
    metrics = run.results["results"][TASK]
    # Rescoring the stage-2 answers reproduces lmms-eval's own aggregate; costs match its means.
    assert entry["always"]["accuracy"] == pytest.approx(metrics["exact_match,none"])
    assert entry["lmms_eval_accuracy"] == metrics["exact_match,none"]
    assert entry["always"]["bytes"] == pytest.approx(metrics["bytes_total,none"])
    assert entry["always"]["flops"] == pytest.approx(metrics["flops_total,none"])
    gated = entry["curves"]["gated"]
    assert gated[0]["rate"] == 0.0 and gated[-1]["rate"] == 1.0 and len(gated) >= 3
    assert [p["bytes"] for p in gated] == sorted(p["bytes"] for p in gated)
    assert entry["never"]["bytes"] < entry["always"]["bytes"]


def test_threshold_run_matches_the_point_derived_from_the_always_run(tiny_llava_run, tmp_path):
    always_out = tiny_llava_run("policy=always").out
    always = find_runs(always_out)[0]
    always_records = [r for r in always.records if r.task == TASK]
    scores = sorted({r.score for r in always_records if r.score is not None})
    assert len(scores) >= 2, "the tiny model should give distinct scores"
    tau = (scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2  # some retransmit, some not
    threshold_run = tiny_llava_run(f"policy=threshold,threshold={tau!r}", tasks=(TASK,))
    check_run(threshold_run, [TASK], MINI_LIMIT)
    threshold_out = threshold_run.out
    threshold = find_runs(threshold_out)[0]

    # Per sample: the threshold run's answer and bytes are the always run's stage-1 or stage-2 ones.
    by_doc = {r.doc_id: r for r in always_records}
    for r in threshold.records:
        a = by_doc[r.doc_id]
        assert r.retransmitted == ((math.inf if a.score is None else a.score) > tau)
        assert r.answer_stage1 == a.answer_stage1
        assert r.answer == (a.answer_stage2 if r.retransmitted else a.answer_stage1)
        assert r.bytes_total == (a.bytes_total if r.retransmitted else a.bytes_global)

    # And the report, given both runs, puts the threshold run on the derived point.
    summary = report([always_out, threshold_out], tmp_path / "report")
    entry = summary["systems"]["tiny-llava:png"]["tasks"][TASK]
    (point,) = entry["points"]
    assert point["policy"] == "threshold" and point["policy_args"]["threshold"] == tau
    assert 0 < point["rate"] < 1
    derived = point["derived_from_always"]
    assert derived["accuracy"] == pytest.approx(point["accuracy"], abs=1e-12)
    for key in ("bytes", "flops", "rate"):
        assert derived[key] == point[key], key
    # The same point is on the gated curve at the score just below tau.
    on_curve = next(p for p in entry["curves"]["gated"] if p["tau"] not in ("inf", "-inf") and p["tau"] < tau)
    assert (on_curve["bytes"], on_curve["flops"], on_curve["rate"]) == (point["bytes"], point["flops"], point["rate"])
    assert threshold_run.results["results"][TASK]["bytes_total,none"] == pytest.approx(point["bytes"])
    assert curves.Point.model_validate(on_curve).accuracy == pytest.approx(point["accuracy"])
