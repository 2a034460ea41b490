"""A report says what is missing and refuses the impossible (issue 34, part 4): impossible
costs in a records file stop report with file, line and field; a copied run reports its own
records; an incomplete run and failed samples are stated under report.md's headline."""
import json
import os

import pytest

from collab_eval import cli
from collab_eval.records import RecordError, read_record_file
from tests.report_records import POPE, TEXTVQA, pope_records, textvqa_records, write_run
from tests.test_check_inputs import results_json


def report(run_dir, out):
    return cli.main(["report", str(run_dir), "--out", str(out), "--seeds", "0"])


def with_change(record: dict, path: str, value) -> dict:
    record = json.loads(json.dumps(record))
    *parents, last = path.split(".")
    target = record
    for key in parents:
        target = target[key]
    target[last] = value
    return record


@pytest.mark.parametrize("field, value, message", [
    ("seconds.stage1", -100.0, "field 'seconds.stage1' is -100.0; expected a finite number >= 0"),
    ("seconds.total", 1e309, "field 'seconds.total' is inf; expected a finite number >= 0"),
    ("bytes_global", -5000, "field 'bytes_global' is -5000; expected a finite number >= 0"),
    ("bytes_original", -1, "field 'bytes_original' is -1"),
    ("bytes_total", 10 ** 12, "field 'bytes_total' is 1000000000000, but its parts"),
    ("flops.decode", -2, "field 'flops.decode' is -2"),
    ("flops_total", 7, "field 'flops_total' is 7, but its parts (flops) sum to 30"),
    ("bytes_global_images", [-3], "field 'bytes_global_images[0]' is -3"),
])
def test_impossible_costs_are_refused_naming_file_line_and_field(tmp_path, capsys, field, value, message):
    records = pope_records()
    records[2] = with_change(records[2], field, value)
    write_run(tmp_path / "run", records)
    path = tmp_path / "run" / "records" / "collab_llava-20260101T000000.rank0.jsonl"
    with pytest.raises(RecordError) as err:
        read_record_file(path)
    assert str(err.value).startswith(f"{path}, line 3: ") and message in str(err.value), str(err.value)
    assert report(tmp_path / "run", tmp_path / "report") == 2
    out = capsys.readouterr().err
    assert "line 3: " in out and message in out and "Traceback" not in out


@pytest.mark.slow  # a second or more: the fast tier stays under a minute
def test_a_copied_run_reports_its_own_records(tmp_path, monkeypatch):
    """A run made with a relative records_dir, copied elsewhere with a different last record:
    reported from the directory the original ran in, the copy still reads its own."""
    monkeypatch.chdir(tmp_path)
    original = tmp_path / "out" / "demo"
    records = [{**r, "run_id": "run-a"} for r in pope_records()]
    write_run(original, records)
    results_json(original / "collab_llava" / "20260101_080000_results.json",
                 "pretrained=x,policy=always,records_dir=out/demo/records,run_id=run-a", {POPE: 4})
    copy = tmp_path / "elsewhere" / "demo"
    copy.parent.mkdir()
    os.system(f"cp -r {original} {copy}")
    changed = [{**r, "answer_stage1": "no", "answer_stage2": "no", "answer": "no"} for r in records]
    write_run(copy, changed)
    assert report(copy, tmp_path / "report") == 0
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    (run,) = summary["runs"]
    assert all(f.startswith("elsewhere/") for f in run["record_files"]), run["record_files"]
    never = summary["systems"]["hand-llava:png"]["tasks"][POPE]["never"]
    assert never["accuracy"] == 0.5  # "no" is right for two of the four documents; the original's gets 1/2 too
    assert report(original, tmp_path / "report-original") == 0
    (run,) = json.loads((tmp_path / "report-original" / "summary.json").read_text())["runs"]
    assert all(f.startswith("out/") for f in run["record_files"]), run["record_files"]


@pytest.mark.slow  # a second or more: the fast tier stays under a minute
def test_incomplete_runs_are_stated_under_the_headline(tmp_path):
    """A run that planned 4 POPE and 2 TextVQA samples holds 3 and 1 (its file cut in the middle
    of the last record): report.md's headline says so, task by task."""
    records = [{**r, "run_id": "run-a"} for r in pope_records()[:3] + textvqa_records()]
    run_dir = write_run(tmp_path / "run", records)
    path = run_dir / "records" / "collab_llava-20260101T000000.rank0.jsonl"
    text = path.read_text()
    path.write_text(text[: text.rstrip("\n").rfind("\n") + 1] + text.rstrip("\n").rsplit("\n", 1)[1][:150])
    results_json(run_dir / "collab_llava" / "20260101_080000_results.json",
                 "pretrained=x,policy=always,run_id=run-a", {POPE: 4, TEXTVQA: 2})
    assert report(run_dir, tmp_path / "report") == 0
    md = (tmp_path / "report" / "report.md").read_text().replace("\\_", "_")
    headline = md[md.index("## Headline"):md.index("## Runs")]
    assert f"Incomplete run run-a (hand-llava): {POPE}: 3 of 4 planned samples present." in headline
    assert f"Incomplete run run-a (hand-llava): {TEXTVQA}: 1 of 2 planned samples present." in headline
    assert "records file cut: " in headline and "line 5: incomplete last line" in headline
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert len(summary["runs"][0]["incomplete"]) == 3


def test_an_unfinished_run_without_results_is_stated_from_its_journal(tmp_path):
    records = [{**r, "run_id": "run-b"} for r in pope_records()[:2]]
    run_dir = write_run(tmp_path / "run", records, name="run-b")
    (run_dir / "records" / "run-b.run.ndjson").write_text(json.dumps(
        {"event": "start", "run_id": "run-b", "session": "s1", "world_size": 2}) + "\n" + json.dumps(
        {"event": "finish", "run_id": "run-b", "session": "s1", "rank": 1}) + "\n")
    assert report(run_dir, tmp_path / "report") == 0
    md = (tmp_path / "report" / "report.md").read_text().replace("\\_", "_")
    assert ("Incomplete run run-b (hand-llava): the run did not finish (its journal has no finish of rank(s) 0); "
            f"samples present: {POPE} 2.") in md


def test_failed_samples_are_stated_per_system_and_task_with_their_costs(tmp_path, capsys):
    """Two failed samples that sent their global image (failed in the locator): the headline says
    how many of how many and how they were scored; the curves count them wrong and costed."""
    records = pope_records()
    for i in (0, 3):  # failed at the locator: global sent, stage 1 ran, answer ""
        records[i] = {**records[i], "error": "LocatorError: locator 'x' failed", "failed_step": "locate",
                      "answer": "", "answer_stage2": None, "bytes_request": 0, "bytes_local": 0,
                      "bytes_total": records[i]["bytes_global"], "flops": {**records[i]["flops"], "stage2": 0}}
        records[i]["flops_total"] = sum(records[i]["flops"].values())
    run_dir = write_run(tmp_path / "run", records)
    assert report(run_dir, tmp_path / "report") == 0
    md = (tmp_path / "report" / "report.md").read_text().replace("\\_", "_")
    headline = md[md.index("## Headline"):md.index("## Runs")]
    assert f"Failed samples: {POPE}, hand-llava (always): 2 of 4 failed. They are scored as wrong" in headline
    assert f"Failed samples: {POPE}, hand-llava (always): 2 of 4 failed." in capsys.readouterr().out  # terminal
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    entry = summary["systems"]["hand-llava:png"]["tasks"][POPE]
    # never: samples 1 and 2 answer "yes" (doc 1 is "no": wrong, doc 2 ""), the failed ones 0: accuracy 0
    assert entry["never"]["accuracy"] == 0.0 and entry["errors"] == 2
    # always: the failed two cost their global image only (100 bytes each), the others 200 and 400
    assert entry["always"]["bytes"] == (100 + 200 + 400 + 100) / 4
