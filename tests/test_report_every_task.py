"""A report for every task: an aggregation that takes lmms-eval's arguments (``args``) as its second
parameter is called as lmms-eval 0.7.3 calls it; a task needing an external judge (HallusionBench's
own functions) or without a per-sample score (docvqa_test's submission writer) is reported with its
reason and a warning while the other tasks' sections are written, exit 0."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from collab_eval.analysis import report
from collab_eval.analysis.runs import find_runs
from collab_eval.analysis.scoring import Scorer
from collab_eval.analysis.summary import summarise
from tests.report_records import POPE, pope_records, record, write_run

COLLAB_EVAL = str(Path(sys.executable).with_name("collab-eval"))
ARGS_TASK = "replica_args_aggregation"
JUDGE_TASK = "replica_hallusion_bench"
SUBMISSION_TASK = "replica_docvqa_test"

# A task in the style of ocrbench/hrbench: process_results returns per-sample details without a
# "score" entry, and the aggregation takes lmms-eval's args (it writes a file under args.output_path).
UTILS = '''from lmms_eval.tasks._task_utils.file_utils import generate_submission_file


def replica_process_results(doc, results):
    pred = results[0].strip().lower()
    return {"replica_accuracy": {"question_id": doc["question_id"], "correct": pred == doc["answer"].lower()}}


def replica_aggregate(results, args):
    path = generate_submission_file("replica_scores.json", args)
    with open(path, "w") as f:
        f.write(str(len(results)))
    return sum(r["correct"] for r in results) / len(results)
'''
HEAD = "dataset_path: parquet\ntest_split: test\noutput_type: generate_until\ndoc_to_text: \"{{question}}\"\n"
YAMLS = {
    ARGS_TASK: HEAD + """doc_to_target: "answer"
process_results: !function utils.replica_process_results
metric_list:
  - metric: replica_accuracy
    aggregation: !function utils.replica_aggregate
    higher_is_better: true
""",
    JUDGE_TASK: HEAD + """doc_to_target: "gt_answer_details"
process_results: !function lmms_eval.tasks.hallusion_bench.evaluate_hb.hb_process_results
metric_list:
  - metric: aAcc
    aggregation: !function lmms_eval.tasks.hallusion_bench.evaluate_hb.hb_aggregation_result_aAcc
    higher_is_better: true
""",
    SUBMISSION_TASK: HEAD + """doc_to_target: "answers"
process_results: !function lmms_eval.tasks.docvqa.utils.docvqa_test_process_results
metric_list:
  - metric: submission
    aggregation: !function lmms_eval.tasks.docvqa.utils.docvqa_test_aggregate_results
    higher_is_better: true
""",
}


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("every_task")
    (directory / "utils.py").write_text(UTILS)
    for task, text in YAMLS.items():
        (directory / f"{task}.yaml").write_text(f"task: {task}\n{text}")
    return directory


def mixed_records() -> list[dict]:
    """Two samples of the args task (stage 2 fixes the first), one of each unscorable task, POPE's hand case."""
    args_docs = [{"question_id": "a0", "question": "Is it red?", "answer": "yes"},
                 {"question_id": "a1", "question": "Is it blue?", "answer": "no"}]
    return ([record(ARGS_TASK, 0, args_docs[0], "no", "Yes", 1.0, 300),
             record(ARGS_TASK, 1, args_docs[1], "no", "No", 2.0, 300),
             record(JUDGE_TASK, 0, {"question": "Is the sky green?", "gt_answer": "0", "category": "VS",
                                    "subcategory": "chart", "set_id": 0, "figure_id": 0, "question_id": 0},
                    "no", "no", 1.0, 300),
             record(SUBMISSION_TASK, 0, {"questionId": "57344", "question": "What is the date?", "answers": None},
                    "1/8/93", "1/8/93", 1.0, 300)]
           + pope_records())


def test_an_aggregation_taking_lmms_evals_args_scores_each_sample(tasks_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a submission file written to the current directory would show here
    metric = Scorer(include_paths=[tasks_dir]).metric(ARGS_TASK)
    doc = {"question_id": "a0", "question": "Is it red?", "answer": "yes"}
    # Before the fix: TypeError: replica_aggregate() missing 1 required positional argument: 'args'
    assert [metric.accuracy(doc, a) for a in ("Yes", "no", " yes ")] == [1.0, 0.0, 1.0]
    assert list(tmp_path.iterdir()) == []  # args.output_path is a scratch directory, not the user's


@pytest.mark.slow  # seconds: lmms-eval's own retries (about 8 s of sleep) loading the replica's documents
def test_report_writes_every_scorable_task_and_says_why_not_the_others(tasks_dir, tmp_path, monkeypatch):
    # The sample browser asks lmms-eval for the replica task's documents, which have no data files:
    # datasets then searches the current directory for them (from the repository's root, its whole
    # tree and .venv: 20 s and more) before lmms-eval gives up. An empty directory keeps that short.
    monkeypatch.chdir(tmp_path)
    run_dir = write_run(tmp_path / "run", mixed_records())
    warnings = []
    summary = summarise(find_runs(run_dir), scorer=Scorer(include_paths=[tasks_dir]), seeds=0, warn=warnings.append)
    tasks = summary.to_json()["systems"]["hand-llava:png"]["tasks"]
    assert (tasks[ARGS_TASK]["never"]["accuracy"], tasks[ARGS_TASK]["always"]["accuracy"]) == (0.5, 1.0)
    assert tasks[ARGS_TASK]["metric"] == "replica_accuracy"
    assert tasks[POPE]["always"]["accuracy"] == 0.5  # tests/test_curves.py's hand case, untouched
    assert "needs an external judge" in tasks[JUDGE_TASK]["unscored"]
    assert "evaluate_by_chatgpt" in tasks[JUDGE_TASK]["unscored"] and "never" not in tasks[JUDGE_TASK]
    assert "cannot be scored per sample" in tasks[SUBMISSION_TASK]["unscored"]
    assert "docvqa_test_aggregate_results returned NoneType" in tasks[SUBMISSION_TASK]["unscored"]
    assert sorted(w.split(":")[0] for w in warnings) == [SUBMISSION_TASK, JUDGE_TASK]
    md = report.write(summary, tmp_path / "report")["markdown"].read_text()
    assert "## Task replica\\_hallusion\\_bench" in md and "Not scored for hand-llava: task" in md
    assert "## Task replica\\_args\\_aggregation" in md and "## Task collab\\_pope\\_mini" in md


@pytest.mark.slow
def test_the_command_exits_0_with_a_warning_for_an_unscorable_task(tasks_dir, tmp_path):
    run_dir = write_run(tmp_path / "run", mixed_records())
    (run_dir / "20260101_000000_results.json").write_text(json.dumps({
        "config": {"model": "collab_llava", "model_args": "policy=always",
                   "resolved_cli_args": {"include_path": str(tasks_dir)}},
        "results": {}, "n-samples": {}}))
    result = subprocess.run([COLLAB_EVAL, "report", str(run_dir), "--out", str(tmp_path / "report"), "--seeds", "0"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"warning: {JUDGE_TASK}: not scored" in result.stderr
    assert f"warning: {SUBMISSION_TASK}: not scored" in result.stderr
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["systems"]["hand-llava:png"]["tasks"][ARGS_TASK]["always"]["accuracy"] == 1.0
    assert not (tmp_path / "submissions").exists()
