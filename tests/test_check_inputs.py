"""collab-eval report and check on damaged, partial, mixed and malformed inputs (issue 10):
what a crash leaves is skipped with a warning, runs are never mixed, a run on other samples or
another system is "not comparable" (exit 2), every malformed input is one line naming the file
(exit 2), and exit 1 means a regression only."""
import json
import math

import pytest

from collab_eval import cli
from collab_eval.analysis.runs import find_runs
from collab_eval.analysis.summary import Summary, summarise
from tests.report_records import POPE, TEXTVQA, pope_records, record, textvqa_records, write_run

SYSTEM = "hand-llava:png"


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """summary.json of the hand-made always run: POPE (4 samples) and TextVQA (2)."""
    out = tmp_path_factory.mktemp("baseline")
    assert cli.main(["report", str(write_run(out / "run", pope_records() + textvqa_records())), "--out",
                     str(out / "report"), "--seeds", "0"]) == 0
    return out / "report" / "summary.json"


def report(run_dir, out):
    return cli.main(["report", str(run_dir), "--out", str(out), "--seeds", "0"])


def check(run, baseline, *extra):
    return cli.main(["check", str(run), "--baseline", str(baseline), *extra])


def one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"collab-eval {command}: error: ") and "Traceback" not in err
    return err


def lines(records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def results_json(path, model_args: str, counts: dict, date: str = "20260101_080000"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "date": date, "results": {task: {} for task in counts},
        "n-samples": {task: {"original": n, "effective": n} for task, n in counts.items()},
        "config": {"model": "collab_llava", "model_args": model_args, "resolved_cli_args": {"timezone": "UTC"}}}))


def pope_n(summary_json) -> int:
    return json.loads(summary_json.read_text())["systems"][SYSTEM]["tasks"][POPE]["n"]


# ----- what a crash leaves ---------------------------------------------------------------------
def test_partial_last_line_and_empty_file_are_skipped_with_a_warning(tmp_path, capsys, baseline):
    run = write_run(tmp_path / "run", pope_records() + textvqa_records())
    records = run / "records" / "collab_llava-20260101T000000.rank0.jsonl"
    whole = records.read_text()
    cut = whole[:-1]  # disk full while the last record (TextVQA doc 1) was written: no newline, cut short
    records.write_text(cut[: cut.rfind("\n") + 1] + cut[cut.rfind("\n") + 1:][:200])
    empty = run / "records" / "collab_llava-20260101T010000.rank0.jsonl"  # killed before its first sample
    empty.write_text("")
    assert report(run, tmp_path / "report") == 0
    err = capsys.readouterr().err
    assert f"warning: {records}, line 6: incomplete last line" in err
    assert f"warning: {empty}: empty (no records), skipped" in err
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["systems"][SYSTEM]["tasks"][TEXTVQA]["n"] == 1  # the complete lines are used
    assert pope_n(tmp_path / "report" / "summary.json") == 4
    assert [r["samples"] for r in summary["runs"]] == [5]
    # check reads it the same way: one TextVQA sample against the baseline's two is not comparable.
    assert check(run, baseline) == 2
    assert f"{SYSTEM} / {TEXTVQA}: 1 samples in the run, 2 in the baseline" in capsys.readouterr().out


def test_only_an_empty_records_file_is_no_run(tmp_path, capsys):
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / "collab_llava-20260101T000000.rank0.jsonl").write_text("")
    assert report(tmp_path, tmp_path / "report") == 2
    err = capsys.readouterr().err
    assert "warning:" in err and "no lmms-eval results.json or collab records" in err and "Traceback" not in err


def test_an_incomplete_run_is_never_chosen_over_a_complete_one(tmp_path, capsys, baseline):
    shared = tmp_path / "shared"
    # A run killed after two samples, started right when results.json says the run began; the rerun,
    # complete, started an hour later into the same records_dir.
    write_run(shared, pope_records()[:2], "collab_llava-20260101T080000")
    write_run(shared, pope_records() + textvqa_records(), "collab_llava-20260101T090000")
    results_json(tmp_path / "out" / "collab_llava" / "20260101_080000_results.json",
                 f"pretrained=x,policy=always,records_dir={shared / 'records'}", {POPE: 4, TEXTVQA: 2})
    (run,) = find_runs(tmp_path / "out")
    assert run.name == "collab_llava-20260101T090000" and len(run.records) == 6 and run.complete
    # Both runs read together: the complete one is the system, the killed one a repeat beside it.
    summary = summarise(find_runs(tmp_path / "out") + find_runs(shared), seeds=0)
    assert summary.systems[SYSTEM].tasks[POPE].from_always.n == 4
    assert summary.systems[f"{SYSTEM} #2"].tasks[POPE].from_always.n == 2
    assert check(tmp_path / "out", baseline) == 0


# ----- run ids ---------------------------------------------------------------------------------
@pytest.mark.slow  # a second or more: the fast tier stays under a minute
def test_a_resumed_run_is_one_run_by_its_run_id(tmp_path, capsys, baseline):
    records_dir = tmp_path / "records"
    records_dir.mkdir()
    first, rest = pope_records()[:3], pope_records()[3:] + textvqa_records()
    tag = lambda rs, run_id: [{**r, "run_id": run_id} for r in rs]  # noqa: E731
    # Killed after three samples; resumed into a second file, redoing sample 2 once more.
    (records_dir / "collab_llava-20260101T080000.rank0.jsonl").write_text(lines(tag(first, "run-a")))
    (records_dir / "collab_llava-20260101T083000.rank0.jsonl").write_text(lines(tag(first[2:] + rest, "run-a")))
    # Another run in the same directory, nearer in time to results.json, with another id.
    (records_dir / "collab_llava-20260101T090000.rank0.jsonl").write_text(lines(tag(pope_records()[:1], "run-b")))
    results_json(tmp_path / "out" / "collab_llava" / "20260101_090000_results.json",
                 f"pretrained=x,policy=always,records_dir={records_dir},run_id=run-a", {POPE: 4, TEXTVQA: 2},
                 date="20260101_090000")
    (run,) = find_runs(tmp_path / "out")
    assert run.name == "run-a" and len(run.records) == 6 and len(run.record_files) == 2 and run.complete
    assert "run run-a: 1 sample(s) recorded more than once" in capsys.readouterr().err
    assert report(tmp_path / "out", tmp_path / "report") == 0
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert [(r["name"], r["samples"]) for r in summary["runs"]] == [("run-a", 6)]
    assert check(tmp_path / "out", baseline) == 0


def test_a_results_json_whose_run_id_has_no_records_says_so(tmp_path, capsys):
    write_run(tmp_path, [{**r, "run_id": "run-a"} for r in pope_records()])
    results = tmp_path / "collab_llava" / "20260101_080000_results.json"
    results_json(results, "pretrained=x,policy=always,run_id=run-z", {POPE: 4})
    assert report(tmp_path, tmp_path / "report") == 2
    assert f"{results}: no records of its run_id run-z" in one_error_line(capsys, "report")


# ----- policy parameters from the records --------------------------------------------------------
def test_a_default_threshold_run_is_derived_from_its_recorded_policy_args(tmp_path):
    write_run(tmp_path / "always", pope_records())
    # Started with policy=threshold alone: tau is the default 1.0, which only the records hold.
    threshold = [record(r["task"], r["doc_id"], r["doc"], r["answer_stage1"],
                        r["answer_stage2"] if (math.inf if r["score"] is None else r["score"]) > 1.0 else None,
                        r["score"], r["bytes_total"] if (r["score"] is None or r["score"] > 1.0) else 100,
                        policy="threshold", policy_args={"threshold": 1.0, "rate": 0.5, "seed": 0})
                 for r in pope_records()]
    write_run(tmp_path / "threshold", threshold, "collab_llava-20260101T000100")
    results_json(tmp_path / "threshold" / "collab_llava" / "20260101_000100_results.json",
                 f"pretrained=x,policy=threshold,records_dir={tmp_path / 'threshold' / 'records'}", {POPE: 4})
    runs = find_runs(tmp_path / "always") + find_runs(tmp_path / "threshold")
    (point,) = summarise(runs, seeds=0).systems[SYSTEM].tasks[POPE].points
    assert point.policy_args == {"score": "max", "threshold": 1.0}
    assert point.label == "threshold τ=1 (max)"
    assert point.derived_from_always is not None and point.derived_from_always == point.point


# ----- sample counts and systems -----------------------------------------------------------------
def test_check_of_a_run_on_fewer_samples_is_not_comparable(tmp_path, capsys, baseline):
    run = write_run(tmp_path, pope_records()[:3] + textvqa_records())
    assert check(run, baseline) == 2
    out = capsys.readouterr().out
    assert f"not comparable with {baseline}" in out and "REGRESSION" not in out
    assert f"- {SYSTEM} / {POPE}: 3 samples in the run, 4 in the baseline" in out
    assert check(run, baseline, "--allow-subset") in (0, 1)  # compared on what it has, when asked
    assert f"{POPE}: 3 samples in the run, 4 in the baseline (compared anyway" in capsys.readouterr().out
    # More samples than the baseline is never a subset.
    more = write_run(tmp_path / "more", pope_records() + [{**r, "doc_id": 9} for r in pope_records()[:1]]
                     + textvqa_records())
    assert check(more, baseline, "--allow-subset") == 2
    assert f"{POPE}: 5 samples in the run, 4 in the baseline" in capsys.readouterr().out


def test_check_of_another_system_names_it_and_compares_it_when_asked(tmp_path, capsys, baseline):
    jpeg = [{**r, "codec": "jpeg:5"} for r in pope_records() + textvqa_records()]
    run = write_run(tmp_path, jpeg)
    assert check(run, baseline) == 2
    out = capsys.readouterr().out
    assert (f"- system {SYSTEM}: in the baseline, not in the run (the run has: hand-llava:jpeg:5; to compare one "
            f"with it anyway: --system hand-llava:jpeg:5={SYSTEM})") in out
    assert f"- hand-llava:jpeg:5 / {POPE}: in the run, not in the baseline (not compared)" in out
    assert check(run, baseline, "--system", f"hand-llava:jpeg:5={SYSTEM}") == 0
    out = capsys.readouterr().out
    assert f"hand-llava:jpeg:5 vs {SYSTEM}" in out and "not in the baseline" not in out
    assert check(run, baseline, "--system", f"nope={SYSTEM}") == 2
    assert "--system nope=hand-llava:png: the run has no system nope" in one_error_line(capsys, "check")


def test_check_of_a_run_without_an_always_run_says_what_it_has(tmp_path, capsys, baseline):
    run = write_run(tmp_path, pope_records(policy="never") + textvqa_records(policy="never"))
    assert check(run, baseline) == 2
    assert f"- {SYSTEM} / {POPE}: the run has no always run of it (the curves need one; it has never)" \
        in capsys.readouterr().out


# ----- malformed inputs: one line naming the file, exit 2 ----------------------------------------
@pytest.mark.parametrize("content, says", [
    ("{}", "the top level has no 'systems'"),
    ("[1, 2]", "the top level: expected an object, got a list"),
    ('{"systems": {"s": {"tasks": {"t": {"metric": "m", "n": 4, "curves": {"gated": []}}}}}}',
     "systems['s'].tasks['t'].never: expected an object, got null"),
    ('{"systems": {"s": {"tasks": {"t": {"metric": "m", "n": 4, "never": {"accuracy": "high"}}}}}}', None),
    ('{"systems": ', "not valid JSON (Expecting value at line 1 column 13)"),
])
def test_a_malformed_baseline_is_one_line_naming_it(tmp_path, capsys, baseline, content, says):
    bad = tmp_path / "bad_summary.json"
    bad.write_text(content)
    run = write_run(tmp_path, pope_records() + textvqa_records())
    assert check(run, bad) == 2
    err = one_error_line(capsys, "check")
    assert str(bad) in err and (says is None or says in err)
    assert check(bad, baseline) == 2  # the same file given as the run's summary
    assert str(bad) in one_error_line(capsys, "check")


@pytest.mark.parametrize("content, says", [
    ("[]", "expected lmms-eval's results (a JSON object), got a list"),
    ('{"results": ', "not valid JSON (Expecting value at line 1 column 13)"),
    ('{"config": []}', "'config' should be an object, got a list"),
])
def test_a_malformed_results_json_is_one_line_naming_it(tmp_path, capsys, baseline, content, says):
    write_run(tmp_path, pope_records())
    bad = tmp_path / "collab_llava" / "20260101_000000_results.json"
    bad.parent.mkdir()
    bad.write_text(content)
    for command in ("report", "check"):
        extra = ["--out", str(tmp_path / "report")] if command == "report" else ["--baseline", str(baseline)]
        assert cli.main([command, str(tmp_path), *extra]) == 2
        assert f"{bad}: {says}" in one_error_line(capsys, command)


@pytest.mark.parametrize("line, says", [
    ("[1, 2]", "line 2: not a record (expected a JSON object, got list)"),
    ('{"hello": "world"}', "line 2: not a record (no 'task', 'doc_id'"),
    ('{"task": 3}', "line 2: not a record (no 'doc_id'"),
    ('{"task": "x", "doc_id": 1', "line 2: not valid JSON"),
])
def test_a_record_line_that_is_not_a_record_is_one_line_naming_file_and_line(tmp_path, capsys, baseline, line, says):
    run = write_run(tmp_path, pope_records())
    path = run / "records" / "collab_llava-20260101T000000.rank0.jsonl"
    first, *rest = path.read_text().splitlines(keepends=True)
    path.write_text(first + line + "\n" + "".join(rest))  # not the last line: not what a crash leaves
    assert report(run, tmp_path / "report") == 2
    assert f"{path}, {says}" in one_error_line(capsys, "report")
    assert check(run, baseline) == 2
    assert f"{path}, {says}" in one_error_line(capsys, "check")


def test_summary_round_trips_through_json(baseline):
    data = json.loads(baseline.read_text())
    assert Summary.from_json(data).to_json() == data
