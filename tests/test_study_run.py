"""collab-eval study for real (slow): a one-cell study on the tiny LLaVA, TextVQA's OCR variant
generated from lmms-eval's own textvqa_val YAML (on the shipped local TextVQA fixture), the
study command alone killed with SIGKILL once its first record is written (its lmms-eval child
ends with it), restarted (the cell resumed with resume=true),
started once more (the cell skipped), and its report compared with an uninterrupted run's."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from collab_eval import study
from collab_eval.cli import main
from collab_eval.records import read_records
from collab_eval.shipped import TASK_DATA_DIR

LMMS_TASKS = Path(__import__("lmms_eval").__file__).parent / "tasks"
COLLAB_EVAL = str(Path(sys.executable).with_name("collab-eval"))
RUN_NAMES = {"name", "run", "results_file", "record_files", "always_runs"}  # run ids and paths: differ by run


def tiny_study(tmp_path: Path) -> Path:
    replica = tmp_path / "replica"
    replica.mkdir()
    (replica / "replica_textvqa_val.yaml").write_text(
        f"include: {LMMS_TASKS / 'textvqa' / 'textvqa_val.yaml'}\ntask: replica_textvqa_val\n"
        f"dataset_path: parquet\ndataset_kwargs:\n  data_files:\n"
        f"    validation: {TASK_DATA_DIR / 'textvqa_mini.parquet'}\n")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tiny", "models": [{"name": "tiny-llava", "adapter": "collab_llava", "checkpoint": "tiny-llava"}],
        "task_sets": [{"name": "ocr", "include_path": str(replica),
                       "tasks": [{"task": "replica_textvqa_val", "set": {"ocr": True}}]}],
        "policies": ["always"], "codecs": ["png"]}))
    return path


def without_run_names(data):
    if isinstance(data, dict):
        return {k: without_run_names(v) for k, v in data.items() if k not in RUN_NAMES}
    if isinstance(data, list):
        return [without_run_names(v) for v in data]
    return data


def first_record_written(records_dir: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the study ended before its first record"
        if any(b"\n" in p.read_bytes() for p in records_dir.glob("*.jsonl")):
            return
        time.sleep(0.01)
    raise AssertionError(f"no record in {records_dir} after {timeout} s")


def group_ended(group: int, timeout: float) -> bool:
    """Whether every process of process group ``group`` has exited, waiting up to ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


@pytest.mark.slow
def test_a_study_killed_and_restarted_reports_as_an_uninterrupted_one(tmp_path, tiny_llava_path, capsys):
    spec_file = tiny_study(tmp_path)
    whole, cut = tmp_path / "whole", tmp_path / "cut"

    # Uninterrupted: the variant generated, the one cell run, the report.
    assert main(["study", str(spec_file), "--out", str(whole), "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert "generating: collab-eval costed-tasks --tasks replica_textvqa_val --set ocr=true" in out
    (cell,) = study.cells(study.load_study(spec_file), whole)
    records = read_records(sorted(cell.records_dir.glob("*.jsonl")))
    assert [r.task for r in records] == ["collab_replica_textvqa_val_ocr"] * 2
    for r in records:  # lmms-eval's own prompt, with the document's OCR tokens
        assert f"\nReference OCR token: {', '.join(r.doc['ocr_tokens'])}\n" in r.question

    # The study command alone killed (kill -9 of its pid, not of its process group) once its cell's
    # first record is on disk: its lmms-eval child must end with it (left running, it would finish
    # the cell, and hold the run's lock meanwhile). The variants already generated are kept.
    shutil.copytree(whole / "tasks", cut / "tasks")
    process = subprocess.Popen([COLLAB_EVAL, "study", str(spec_file), "--out", str(cut), "--limit", "2"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    (killed,) = study.cells(study.load_study(spec_file), cut)
    try:
        first_record_written(killed.records_dir, process)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        assert group_ended(process.pid, timeout=30), "the killed study's lmms-eval child kept running"
    finally:
        if not group_ended(process.pid, timeout=0):
            os.killpg(process.pid, signal.SIGKILL)
    assert study.cell_state(killed) == "interrupted"
    assert main(["study", str(spec_file), "--out", str(cut), "--limit", "2", "--dry-run"]) == 0
    assert "resume=true" in capsys.readouterr().out

    # Restarted: the cell resumed, the run continued (one run id), then the report.
    assert main(["study", str(spec_file), "--out", str(cut), "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert "costed variants up to date" in out and "interrupted before, resumed with resume=true" in out
    resumed = read_records(sorted(killed.records_dir.glob("*.jsonl")))
    assert len({r.run_id for r in resumed}) == 1 and sorted(r.doc_id for r in resumed) == [0, 1]
    log = (killed.folder / "lmms-eval.log").read_text()
    assert "resume=true" in log and "resuming run" in log

    # Started again: nothing left to run.
    size = len(log)
    assert main(["study", str(spec_file), "--out", str(cut), "--limit", "2"]) == 0
    assert "complete, skipped" in capsys.readouterr().out
    assert len((killed.folder / "lmms-eval.log").read_text()) == size

    a = json.loads((whole / "report" / "summary.json").read_text())
    b = json.loads((cut / "report" / "summary.json").read_text())
    assert without_run_names(a) == without_run_names(b)
    assert a["systems"]["tiny-llava:png"]["tasks"]["collab_replica_textvqa_val_ocr"]["n"] == 2
