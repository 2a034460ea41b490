"""Running the real lmms-eval command line from tests, and reading what it wrote."""
import glob
import json
import os
import subprocess
import sys
from pathlib import Path

from collab_eval.records import read_records

REPO = Path(__file__).resolve().parent.parent
LMMS_EVAL = str(Path(sys.executable).with_name("lmms-eval"))


def run_lmms_eval(model: str, model_args: str, tasks: str, out: Path, include_path: Path = REPO / "tasks",
                  extra: tuple = (), launcher: tuple = ()) -> subprocess.CompletedProcess:
    """lmms-eval logs an exception and exits 0 unless --verbosity DEBUG: tests run it in
    DEBUG and still check that the outputs exist."""
    cmd = [*launcher] if launcher else [LMMS_EVAL]
    cmd += ["--model", model, "--model_args", model_args, "--tasks", tasks,
            "--include_path", str(include_path), "--output_path", str(out), "--log_samples",
            "--verbosity", "DEBUG", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), timeout=900)


def results_json(out: Path) -> dict:
    paths = glob.glob(str(out / "**" / "*_results.json"), recursive=True)
    assert len(paths) == 1, f"expected one results.json under {out}, found {paths}"
    return json.loads(Path(paths[0]).read_text())


def samples(out: Path, task: str) -> list[dict]:
    paths = glob.glob(str(out / "**" / f"*_samples_{task}.jsonl"), recursive=True)
    assert len(paths) == 1, f"expected one samples file for {task} under {out}, found {paths}"
    return [json.loads(line) for line in Path(paths[0]).read_text().splitlines() if line.strip()]


def records(records_dir: Path) -> list[dict]:
    return read_records(sorted(Path(records_dir).glob("*.jsonl")))
