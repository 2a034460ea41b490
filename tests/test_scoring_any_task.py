"""collab-eval report scores any generate_until task the way lmms-eval does: built-in metrics
without process_results (anls, exact_match with options), process_results returning a different
metric per document (MME), dict-valued metrics; it names the metric per task."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from collab_eval.analysis import report
from collab_eval.analysis.runs import find_runs
from collab_eval.analysis.scoring import Scorer, TaskMetric, registered_metric
from collab_eval.analysis.summary import summarise
from tests.helpers import records, results_json, run_lmms_eval
from tests.replica_tasks import DOCVQA, DOCVQA_DOCS, GQA, GQA_DOCS, MME, MME_DOCS, write_replicas
from tests.report_records import record, write_run

COLLAB_EVAL = str(Path(sys.executable).with_name("collab-eval"))


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
    return write_replicas(tmp_path_factory.mktemp("replicas"))


@pytest.fixture(scope="module")
def scorer(tasks_dir):
    return Scorer(include_paths=[tasks_dir])


def test_registered_metric_is_lmms_evals_own_function():
    import lmms_eval.api.metrics as metrics
    assert registered_metric("anls") is metrics.anls
    assert registered_metric("exact_match") is metrics.exact_match_fn
    with pytest.raises(ValueError, match="'no_such_metric' is not in lmms-eval's metric registry"):
        registered_metric("no_such_metric")


def test_docvqa_anls_without_process_results(scorer):
    metric = scorer.metric(DOCVQA)
    doc = DOCVQA_DOCS[0]  # answers "1/8/93", "january 8 1993"
    assert metric.metric == "anls"
    assert metric.accuracy(doc, "1/8/94") == pytest.approx(1 - 1 / 6)  # one edit in six characters
    assert metric.accuracy(doc, " January  8 1993 ") == 1.0  # case and spaces normalised by anls
    assert metric.accuracy(doc, "8 jan") == 0.0  # similarity below anls's 0.5 threshold counts 0
    assert metric.accuracy(doc, None) == 0.0  # an empty answer
    assert metric.accuracy(DOCVQA_DOCS[1], "R. J. Marshal") == pytest.approx(1 - 1 / 14)


def test_gqa_exact_match_gets_its_metric_list_options(scorer):
    metric = scorer.metric(GQA)  # exact_match with ignore_case and ignore_punctuation
    assert metric.metric == "exact_match"
    assert [metric.accuracy(GQA_DOCS[0], a) for a in ("Yellow.", "YELLOW", "yellow sign", "")] == [1.0, 1.0, 0.0, 0.0]


def test_mme_scores_each_document_with_the_metric_it_returns(scorer):
    metric = scorer.metric(MME)
    cognition, perception = MME_DOCS[:2]  # answers Yes (code_reasoning) and No (OCR)
    assert metric.metric == "mme_perception_score"  # before any document: the first listed
    assert [metric.accuracy(cognition, a) for a in ("Yes", "no", "Yes, it is.")] == [1.0, 0.0, 1.0]
    assert metric.metric == "mme_cognition_score"
    assert [metric.accuracy(perception, a) for a in ("Yes", "No.")] == [0.0, 1.0]
    assert metric.metric == "mme_perception_score / mme_cognition_score"  # metric_list order
    assert metric.used == {"mme_cognition_score": 3, "mme_perception_score": 2}


def test_a_scorer_without_the_tasks_metric_says_so():
    metric = TaskMetric("t", ("wanted",), lambda doc, results: {"other": 1.0})
    with pytest.raises(ValueError, match=r"task 't': scoring returned \['other'\], none of .*'wanted'"):
        metric.accuracy({}, "x")
    dict_metric = TaskMetric("t", ("m",), lambda doc, results: {"m": {"value": 1}})
    with pytest.raises(ValueError, match="without 'score'"):
        dict_metric.accuracy({}, "x")


def test_a_corpus_level_metric_stops_with_its_name():
    from collab_eval.analysis.scoring import metric_from_config
    metric = metric_from_config("corpus_task", {"output_type": "generate_until", "doc_to_target": "answer",
                                                "metric_list": [{"metric": "bleu", "higher_is_better": True}]})
    with pytest.raises(ValueError, match="task 'corpus_task': metric 'bleu' has no per-sample score"):
        metric.accuracy({"answer": "a cat"}, "a cat")


def test_each_document_and_answer_pair_is_scored_once(scorer):
    calls = []
    real = scorer.metric(DOCVQA).results

    def counted(doc, results):
        calls.append(results[0])
        return real(doc, results)
    metric = TaskMetric(DOCVQA, ("anls",), counted)
    doc = DOCVQA_DOCS[0]
    values = [metric.accuracy(dict(doc), a) for a in ("1/8/94", "1/8/94", "xyz", "1/8/94")]
    assert values == [pytest.approx(1 - 1 / 6)] * 2 + [0.0, pytest.approx(1 - 1 / 6)]
    assert calls == ["1/8/94", "xyz"]
    assert metric.used == {"anls": 4}


def replica_records():
    """Two samples per task; the stage-2 answer fixes the first and breaks the second."""
    rows = []
    for task, docs, answers in ((DOCVQA, DOCVQA_DOCS, [("8 jan", "1/8/94"), ("R. J. Marshall", "Marsh")]),
                                (MME, MME_DOCS, [("No", "Yes"), ("No", "Yes")]),
                                (GQA, GQA_DOCS, [("blue", "Yellow."), ("no", "yes")])):
        for i, (doc, (stage1, stage2)) in enumerate(zip(docs, answers)):
            rows.append(record(task, i, doc, stage1, stage2, score=1.0 + i, bytes_total=300))
    return rows


@pytest.mark.slow  # a second or more: the fast tier stays under a minute
def test_report_names_and_uses_each_tasks_metric(tmp_path, scorer):
    run_dir = write_run(tmp_path / "run", replica_records())
    summary = summarise(find_runs(run_dir), scorer=scorer)
    tasks = summary.to_json()["systems"]["hand-llava:png"]["tasks"]
    assert {t: e["metric"] for t, e in tasks.items()} == {
        DOCVQA: "anls", MME: "mme_perception_score / mme_cognition_score", GQA: "exact_match"}
    # never = stage-1 answers, always = stage-2 answers, means over the two samples.
    assert tasks[DOCVQA]["never"]["accuracy"] == pytest.approx((0 + 1) / 2)
    assert tasks[DOCVQA]["always"]["accuracy"] == pytest.approx((1 - 1 / 6 + 0) / 2)  # "Marsh": 9 edits in 14
    assert (tasks[MME]["never"]["accuracy"], tasks[MME]["always"]["accuracy"]) == (0.5, 0.5)
    assert (tasks[GQA]["never"]["accuracy"], tasks[GQA]["always"]["accuracy"]) == (0.5, 0.5)
    paths = report.write(summary, tmp_path / "report")
    md = paths["markdown"].read_text()
    assert "Accuracy is lmms-eval's mme\\_perception\\_score / mme\\_cognition\\_score" in md
    assert "Accuracy is lmms-eval's anls" in md
    text = report.headline(summary)
    assert any(line.startswith(DOCVQA) and " anls " in line for line in text.splitlines())


@pytest.mark.slow
def test_report_on_a_real_lmms_eval_run_of_the_replicas(tasks_dir, tmp_path):
    """collab_llava (policy always) on the replicas through lmms-eval; the report, started from the
    run directory alone, rescores the answers to lmms-eval's own aggregates."""
    out = tmp_path / "run"
    tasks = [DOCVQA, MME, GQA]
    proc = run_lmms_eval("collab_llava", f"pretrained=smalldetail-llava,policy=always,records_dir={out / 'records'}",
                         ",".join(tasks), out, include_path=tasks_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(records(out / "records")) == 8, proc.stderr[-3000:]
    result = subprocess.run([COLLAB_EVAL, "report", str(out), "--out", str(tmp_path / "report")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    entries = summary["systems"]["smalldetail-llava:png"]["tasks"]
    lmms = results_json(out)["results"]
    assert entries[DOCVQA]["metric"] == "anls" and entries[GQA]["metric"] == "exact_match"
    assert entries[DOCVQA]["always"]["accuracy"] == pytest.approx(lmms[DOCVQA]["anls,none"])
    assert entries[GQA]["always"]["accuracy"] == pytest.approx(lmms[GQA]["exact_match,none"])
    assert entries[MME]["n"] == 4 and entries[MME]["metric"].startswith("mme_")
    headline = result.stdout.split("\n\n", 1)[1]
    assert all(task in headline for task in tasks)
