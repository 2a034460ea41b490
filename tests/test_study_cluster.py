"""The study's executors for real (slow): the offline smalldetail study, cut to smalldetail-llava on
png and jpeg:50 (2 cells) at --limit 3, run one cell after another, by a local pool of two, and
through a real single-node Slurm cluster (tests/slurm_cluster.py; skipped, with the reason, where
none can be started). Every record equals the sequential run's but for run ids and timings;
--status follows the cells; a cell cancelled mid-run with scancel and submitted again resumes
with every record once; a cell with a bad model arg shows failed with its log, writes no report,
and runs once the file is fixed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from collab_eval import study, study_exec
from collab_eval.cli import main
from collab_eval.records import read_records
from tests.slurm_cluster import slurm  # noqa: F401  (the session's Slurm cluster fixture)

pytestmark = pytest.mark.slow
COLLAB_EVAL = str(Path(sys.executable).with_name("collab-eval"))
LIMIT = ["--limit", "3"]
VARYING = {"run_id", "seconds"}  # differ between any two runs of the same cell


def mini_study(folder: Path, **model_args) -> Path:
    data = yaml.safe_load((study.STUDIES_DIR / "smalldetail.yaml").read_text())
    data["models"] = data["models"][:1]
    if model_args:
        data["models"][0]["model_args"] = model_args
    data |= {"name": "mini", "policies": ["always"], "codecs": ["png", "jpeg:50"]}
    path = folder / "mini.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def records(out: Path) -> dict[str, list[dict]]:
    """Each cell's records, in (task, doc_id) order, without what differs between runs."""
    spec = study.load_study(out / "mini.yaml")
    got = {}
    for cell in study.cells(spec, out.resolve()):
        rows = [r.model_dump() for r in read_records(sorted(cell.records_dir.glob("*.jsonl")))]
        got[study.cell_name(cell)] = sorted(({k: v for k, v in r.items() if k not in VARYING} for r in rows),
                                            key=lambda r: (r["task"], r["doc_id"]))
    return got


def run_ids(cell: study.Cell) -> set[str]:
    return {r.run_id for r in read_records(sorted(cell.records_dir.glob("*.jsonl")))}


def status(out: Path) -> tuple[int, list[str]]:
    done = subprocess.run([COLLAB_EVAL, "study", str(out / "mini.yaml"), "--out", str(out), "--status"],
                          capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout.splitlines()


@pytest.fixture(scope="module")
def sequential(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sequential")
    spec = mini_study(out)
    assert main(["study", str(spec), "--out", str(out), *LIMIT]) == 0
    assert all(len(rows) == 6 for rows in records(out).values())  # 3 documents x 2 tasks per cell
    return out


def test_the_local_pool_of_two_runs_both_cells_at_once_with_the_sequential_records(sequential, tmp_path):
    spec = mini_study(tmp_path)
    assert main(["study", str(spec), "--out", str(tmp_path), *LIMIT, "--executor", "local", "--jobs", "2"]) == 0
    assert records(tmp_path) == records(sequential)
    grid = study.cells(study.load_study(spec), tmp_path.resolve())
    windows = [json.loads((c.folder / "status.json").read_text()) for c in grid]
    first, second = sorted(windows, key=lambda s: s["holder"]["since"])
    assert second["holder"]["since"] <= first["ended"], "the pool ran the cells one after the other"
    assert all(len(run_ids(c)) == 1 for c in grid)
    assert status(tmp_path) == (0, [f"{study.cell_name(c)}: complete" for c in grid])
    assert (tmp_path / "report" / "report.md").exists()


def first_record(cell: study.Cell, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(b"\n" in p.read_bytes() for p in cell.records_dir.glob("*.jsonl")):
            return
        time.sleep(0.02)
    raise AssertionError(f"no record in {cell.records_dir} after {timeout} s")


def job_gone(cluster, job: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], env=cluster.env, capture_output=True, text=True)
        if out.returncode != 0 or not out.stdout.strip() or out.stdout.split()[0] in ("CANCELLED", "COMPLETED"):
            return
        time.sleep(0.5)
    raise AssertionError(f"job {job} still known to Slurm after {timeout} s")


def test_slurm_runs_the_study_and_a_cancelled_cell_resubmitted_resumes_with_every_record_once(
        slurm, sequential, tmp_path):  # noqa: F811
    spec = mini_study(tmp_path)
    env = dict(os.environ, COLLAB_EVAL_STUDY_POLL_S="1")
    png, jpeg = study.cells(study.load_study(spec), tmp_path.resolve())
    submit = [COLLAB_EVAL, "study", str(spec), "--out", str(tmp_path), *LIMIT, "--executor", "slurm",
              "--partition", slurm.partition, "--cpus-per-cell", "1", "--time-min", "30"]
    # Submitted held (--sbatch hold: a further sbatch option), so that the cells wait for the test.
    done = subprocess.run([*submit, "--no-wait", "--sbatch", "hold"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    jobs = {c.folder: json.loads((c.folder / "claim.json").read_text())["holder"]["job"] for c in (png, jpeg)}
    array = {j.split("_")[0] for j in jobs.values()}
    assert all(jobs.values()) and len(array) == 1  # one job array
    assert f"submitted (job {jobs[png.folder]}" in done.stdout
    code, lines = status(tmp_path)
    assert code == 1 and lines == [f"{study.cell_name(c)}: queued (job {jobs[c.folder]})" for c in (png, jpeg)]
    # A second study on the same folder while the jobs wait: the cells are held by live jobs, left alone.
    again = subprocess.run([*submit, "--no-wait"], capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0 and again.stdout.count("left alone") == 2, again.stdout
    assert "submitted (job" not in again.stdout and "nothing submitted" in again.stdout

    # Released: --status says running, with job and node; the png cell cut at its first record.
    slurm.run("scontrol", "release", array.pop())
    spec_now = study.load_study(spec)
    deadline = time.monotonic() + 300
    while (line := study_exec.status_lines(spec_now, tmp_path)[0][0]) != \
            f"{study.cell_name(png)}: running (job {jobs[png.folder]}, node {slurm.node})":
        assert time.monotonic() < deadline and "complete" not in line, line
        time.sleep(0.1)
    first_record(png)
    subprocess.run(["scancel", jobs[png.folder]], env=slurm.env, check=True)
    job_gone(slurm, jobs[png.folder])
    job_gone(slurm, jobs[jpeg.folder], timeout=600)
    cut = read_records(sorted(png.records_dir.glob("*.jsonl")))
    assert 0 < len(cut) < 6, f"{len(cut)} records: the cell was not cut mid-run"
    code, lines = status(tmp_path)
    assert code == 1 and lines == [f"{study.cell_name(png)}: interrupted (killed by signal 15; records of a run; the "
                                   "next study command resumes it)", f"{study.cell_name(jpeg)}: complete"]

    # Submitted again: the png cell resumed by a new job, the complete one skipped; the report.
    done = subprocess.run(submit, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{jpeg.label}: complete, skipped" in done.stdout and "interrupted before, resumed" in done.stdout
    assert records(tmp_path) == records(sequential)
    assert len(run_ids(png)) == 1 and len(run_ids(jpeg)) == 1
    log = (png.folder / "lmms-eval.log").read_text()
    assert "resume=true" in log and "resuming run" in log
    assert status(tmp_path) == (0, [f"{study.cell_name(c)}: complete" for c in (png, jpeg)])
    assert (tmp_path / "report" / "report.md").exists()


def test_a_slurm_cell_with_a_bad_model_arg_shows_failed_with_its_log_and_runs_once_fixed(
        slurm, sequential, tmp_path):  # noqa: F811
    spec = mini_study(tmp_path, max_new_tokens="many")
    env = dict(os.environ, COLLAB_EVAL_STUDY_POLL_S="1")
    png = study.cells(study.load_study(spec), tmp_path.resolve())[0]
    cell = ["--cell", study.cell_name(png)]
    done = subprocess.run([COLLAB_EVAL, "study", str(spec), "--out", str(tmp_path), *LIMIT, *cell,
                           "--executor", "slurm"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "no cell is complete: no report written" in done.stdout and not (tmp_path / "report").exists()
    code, lines = status(tmp_path)
    log = png.folder / "lmms-eval.log"
    assert code == 1 and lines[0].startswith(f"{study.cell_name(png)}: failed (exit status "), lines
    assert "exit status 0;" not in lines[0] and f"; log: {log}; last error: " in lines[0]
    assert "max_new_tokens" in lines[0] and "'many'" in lines[0], lines[0]
    assert lines[1].endswith(": not started")  # --cell ran that cell alone

    # The file fixed (the default token limit, so the records are the sequential run's): it runs.
    mini_study(tmp_path, max_new_tokens=32)
    assert main(["study", str(spec), "--out", str(tmp_path), *LIMIT, *cell]) == 0
    assert records(tmp_path)[study.cell_name(png)] == records(sequential)[study.cell_name(png)]
