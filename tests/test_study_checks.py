"""collab-eval study, fast (no lmms-eval run): one writer per study folder and per cell, the
cell arguments checked and escaped, every adapter, task and policy checked before anything
runs, the environment a cell's lmms-eval gets inside a Slurm allocation, --status, --cell,
no empty report, the pool's GPU slots and the Slurm resources handed to submitit."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from collab_eval import study, study_claims, study_exec
from collab_eval.cli import main

SMALLDETAIL = yaml.safe_load((study.STUDIES_DIR / "smalldetail.yaml").read_text())


def write_study(tmp_path: Path, **change) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(SMALLDETAIL | change))
    return path


def refused(capsys, path: Path, out: Path, *extra: str) -> str:
    assert main(["study", str(path), "--out", str(out), "--dry-run", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("collab-eval study: error: ") and err.count("\n") == 1, err
    return err


# ----- arguments checked and escaped ----------------------------------------------------------
LLAVA = {"name": "m", "adapter": "collab_llava", "checkpoint": "smalldetail-llava"}


@pytest.mark.parametrize("change, message", [
    # A comma would start another model arg: the cell named always would run never (issue 34).
    ({"models": [LLAVA | {"model_args": {"max_new_tokens": "16,policy=never"}}]},
     "max_new_tokens='16,policy=never'"),
    ({"models": [LLAVA | {"model_args": {"x": 'a"b'}}]}, "quotes and brackets"),
    ({"models": [LLAVA | {"checkpoint": "ckpt,policy=never"}]}, "checkpoint"),
    ({"models": [LLAVA | {"model_args": {"bad key": 1}}]}, "'bad key' is not a model arg name"),
    # Policy args are checked like model args.
    ({"policies": [{"policy": "random", "args": {"pretrained": "other"}}]}, "policy args may not set pretrained"),
    ({"policies": [{"policy": "random", "args": {"resume": True}}]}, "policy args may not set resume"),
    ({"policies": [{"policy": "random", "args": {"seed": "1,codec=png"}}]}, "seed='1,codec=png'"),
    # A folder name cannot leave cells/.
    ({"policies": [{"policy": "random", "args": {"note": "/../../../x"}}]}, "not a folder name"),
    # A setting given twice with different values (the folder said rate0.5, the run used 0.9).
    ({"models": [LLAVA | {"model_args": {"rate": 0.9}}], "policies": [{"policy": "random", "args": {"rate": 0.5}}]},
     "rate=0.9 in model m's model_args, rate=0.5 in policy random-rate0.5's args"),
])
def test_cell_arguments_that_lmms_eval_would_read_otherwise_are_refused(tmp_path, capsys, change, message):
    err = refused(capsys, write_study(tmp_path, **change), tmp_path / "out")
    assert "not a study file" in err and message in err
    assert not (tmp_path / "out" / "cells").exists()


HD = {"name": "hd", "adapter": "collab_llava_next", "checkpoint": "tiny-llava-next"}


@pytest.mark.parametrize("own, message", [
    # A model's own policies and codecs are checked as the study's, the message naming the model and the key.
    ({"codecs": ["png", "jpeg:0"]}, "models.1 (hd).codecs: Value error, codec must be one of"),
    ({"codecs": []}, "models.1 (hd).codecs: List should have at least 1 item"),
    ({"policies": ["never", "never"]}, "model hd: its policy names must be unique; repeated: never"),
    ({"policies": [{"policy": "random", "args": {"codec": "png"}}]},
     "models.1 (hd).policies.0.args: Value error, policy args may not set codec"),
    ({"policies": [{"policy": "random", "args": {"rate": 0.5}}], "model_args": {"rate": 0.9}},
     "rate=0.9 in model hd's model_args, rate=0.5 in policy random-rate0.5's args"),
    ({"policy": ["never"]}, "models.1 (hd).policy: Extra inputs are not permitted"),
])
def test_a_models_own_policies_and_codecs_are_checked_naming_the_model(tmp_path, capsys, own, message):
    err = refused(capsys, write_study(tmp_path, models=[LLAVA, HD | own]), tmp_path / "out")
    assert "not a study file" in err and message in err, err


def test_an_unknown_policy_of_a_model_stops_the_dry_run_naming_the_model(tmp_path, capsys):
    err = refused(capsys, write_study(tmp_path, models=[LLAVA, HD | {"policies": ["nevr"]}]), tmp_path / "out")
    assert "model hd: policies: 'nevr' is not one of threshold, random, always, never, tiles" in err, err


def test_a_setting_given_twice_with_the_same_value_is_one_setting(tmp_path, capsys):
    path = write_study(tmp_path, models=[LLAVA | {"model_args": {"rate": 0.5}}],
                       policies=[{"policy": "random", "args": {"rate": 0.5, "seed": 0}}], codecs=["png"])
    assert main(["study", str(path), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("lmms-eval")]
    args = line.split("--model_args ")[1].split(" ")[0]
    assert args.count("rate=") == 1 and "rate=0.5" in args


def test_a_cell_folder_outside_cells_is_refused_even_if_the_schema_let_it_through(tmp_path):
    spec = study.load_study("smalldetail")
    sneaky = spec.models[0].model_copy(update={"name": ".."})  # model_copy does not validate
    with pytest.raises(study.StudyError, match="is not inside"):
        study.cells(spec.model_copy(update={"models": [sneaky]}), tmp_path)


@pytest.mark.parametrize("change, message", [
    ({"models": [LLAVA | {"adapter": "collab_lava"}]}, "adapter 'collab_lava' is not an lmms-eval model here "
                                                       "(did you mean collab_llava"),
    ({"policies": ["alwayz"]}, "policy 'alwayz' is not one of threshold, random, always, never, tiles"),
    # A task the quick look at the YAMLs misses is asked of lmms-eval's TaskManager (10 s): slow.
    pytest.param({"task_sets": [{"name": "s", "tasks": ["smalldetail_red", "smalldetail_exist"]}]},
                 "task set s: no lmms-eval task, group or tag smalldetail_red", marks=pytest.mark.slow),
    pytest.param({"task_sets": [{"name": "s", "tasks": [{"task": "textvqa_vall", "costed": True}]}]}, "textvqa_vall",
                 marks=pytest.mark.slow),
])
def test_an_unknown_adapter_policy_or_task_stops_the_dry_run_and_the_start(tmp_path, capsys, change, message):
    path = write_study(tmp_path, **change)
    err = refused(capsys, path, tmp_path / "out")
    assert "the study names what does not exist here" in err and message in err
    assert main(["study", str(path), "--out", str(tmp_path / "out")]) == 2  # the start: before any cell
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "cells").exists() and not (tmp_path / "out" / "report").exists()


def test_the_quick_look_finds_tasks_groups_and_tags_of_lmms_eval_and_the_shipped_tasks():
    from collab_eval.shipped import TASKS_DIR
    names = study.yaml_names(str(study.lmms_eval_tasks_dir())) | study.yaml_names(str(TASKS_DIR))
    assert {"textvqa_val", "pope", "mme", "smalldetail_read", "smalldetail_exist"} <= names
    assert study.unknown_tasks(["textvqa_val", "smalldetail_read"], TASKS_DIR) == []


# ----- one writer -----------------------------------------------------------------------------
HOLD = "import sys, time; from pathlib import Path; from collab_eval.study_claims import StudyLock; " \
       "StudyLock.take(Path(sys.argv[1]), 'collab-eval study holder'); print('held', flush=True); time.sleep(600)"


def test_a_second_study_on_the_same_folder_is_refused_naming_the_holder_and_a_dead_holder_never_blocks(
        tmp_path, capsys):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        assert main(["study", "smalldetail", "--out", str(out), "--limit", "1"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"process {holder.pid} on " in err and "collab-eval study holder" in err
        assert not (out / "cells").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = study_claims.StudyLock.take(out)  # the kernel dropped the dead holder's lock
    lock.release()


def test_a_holder_is_alive_only_while_its_own_process_runs(tmp_path):
    me = study_claims.Holder.me()
    assert study_claims.alive(me) is True
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    gone = study_claims.Holder(me.host, child.pid, study_claims.process_start(os.getpid()))
    assert study_claims.alive(gone) is False
    reused = study_claims.Holder(me.host, os.getpid(), "another-boot:1")  # a pid reused by another process
    assert study_claims.alive(reused) is False
    assert study_claims.alive(study_claims.Holder("another-host", os.getpid(), me.start)) is None  # cannot tell


DUMP_ENV = "import json, os, sys; json.dump(dict(os.environ), open(sys.argv[1], 'w'))"


def cell_job(cell, token: str, argv: list[str]) -> study_exec.CellJob:
    return study_exec.CellJob(cell, token, tuple(argv), tuple(argv), ("--model", "x"), wait_s=0)


def test_a_job_of_an_older_submission_leaves_the_cell_alone(tmp_path):
    (cell,) = study.cells(study.load_study("smalldetail"), tmp_path)[:1]
    study_claims.write_claim(cell.folder, study_claims.new_claim())
    outcome = study_exec.run_cell_job(cell_job(cell, "not-the-claims-token", [sys.executable, "-c", "1/0"]),
                                      say=lambda m: None)
    assert outcome.state == "superseded" and "left alone" in outcome.message
    assert sorted(p.name for p in cell.folder.iterdir()) == [".cell.lock", "claim.json"]


def test_a_cell_held_by_a_live_process_is_not_run_again(tmp_path):
    (cell,) = study.cells(study.load_study("smalldetail"), tmp_path)[:1]
    claim = study_claims.new_claim()
    study_claims.write_claim(cell.folder, claim)
    fd = study_claims.hold_cell(cell.folder)
    try:
        outcome = study_exec.run_cell_job(cell_job(cell, claim.token, [sys.executable, "-c", "1/0"]),
                                          say=lambda m: None)
    finally:
        os.close(fd)
    assert outcome.state == "busy" and not (cell.folder / "lmms-eval.log").exists()


def test_inside_a_slurm_job_the_cell_gets_none_of_the_allocations_variables(tmp_path, monkeypatch):
    leaking = {"SLURM_PROCID": "3", "SLURM_JOB_ID": "77", "SLURM_NTASKS": "4", "RANK": "3", "WORLD_SIZE": "4",
               "LOCAL_RANK": "1", "MASTER_ADDR": "node7", "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "x",
               "PMI_RANK": "3", "OMPI_COMM_WORLD_RANK": "3", "SLURM_ARRAY_JOB_ID": "76", "SLURM_ARRAY_TASK_ID": "1"}
    for key, value in leaking.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # the GPUs Slurm gave the job: kept
    monkeypatch.setenv("HF_HOME", "/somewhere")
    (cell,) = study.cells(study.load_study("smalldetail"), tmp_path)[:1]
    claim = study_claims.new_claim()
    study_claims.write_claim(cell.folder, claim)
    dump = tmp_path / "env.json"
    outcome = study_exec.run_cell_job(cell_job(cell, claim.token, [sys.executable, "-c", DUMP_ENV, str(dump)]),
                                      say=lambda m: None)
    env = json.loads(dump.read_text())
    assert not set(leaking) & set(env), set(leaking) & set(env)
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3" and env["HF_HOME"] == "/somewhere"
    # The command "ran" but the cell is not complete: failed, said in status.json, for --status.
    assert outcome.state == "failed" and outcome.exit == 0
    status = json.loads((cell.folder / "status.json").read_text())
    assert status["state"] == "failed" and status["holder"]["job"] == "76_1"


def test_status_names_each_cells_state_and_says_whether_all_are_complete(tmp_path, capsys):
    out = tmp_path / "out"
    spec = study.load_study("smalldetail")
    grid = study.cells(spec, out.resolve())
    # One cell failed: its exit status, log and last error line.
    log = grid[1].folder / "lmms-eval.log"
    log.parent.mkdir(parents=True)
    log.write_text("$ lmms-eval ...\nloading\nValueError: max_new_tokens must be an integer, got 'x'\nbye\n")
    study_claims.write_json(study_exec.status_path(grid[1].folder),
                            {"state": "failed", "exit": 1, "log": str(log),
                             "last_error": study_exec.last_error_line(log)})
    # One interrupted: records, no results.
    grid[2].records_dir.mkdir(parents=True)
    (grid[2].records_dir / "r.rank0.jsonl").write_text('{"task": "a", "doc_id": 0}\n')
    # One held by a live process (this one): running.
    study_claims.write_claim(grid[3].folder, study_claims.new_claim())
    runner = study_claims.Holder.me()
    study_claims.write_json(study_exec.status_path(grid[3].folder), {"state": "running", "holder": runner.__dict__})
    # One handed out by a live study but not started yet: queued.
    study_claims.write_claim(grid[4].folder, claim := study_claims.new_claim())
    assert main(["study", "smalldetail", "--out", str(out), "--status"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(grid)
    assert lines[0] == f"{study.cell_name(grid[0])}: not started"
    assert lines[1] == (f"{study.cell_name(grid[1])}: failed (exit status 1; log: {log}; last error: "
                        "ValueError: max_new_tokens must be an integer, got 'x')")
    assert lines[2].startswith(f"{study.cell_name(grid[2])}: interrupted")
    assert lines[3] == f"{study.cell_name(grid[3])}: running (process {os.getpid()} on {study_claims.host()}, " \
                       f"since {runner.since})"
    assert lines[4] == f"{study.cell_name(grid[4])}: queued (in the study of {claim.holder.describe()})"
    assert main(["study", "smalldetail", "--out", str(out), "--status", "--cell", study.cell_name(grid[1])]) == 1
    assert capsys.readouterr().out.splitlines() == lines[1:2]


def test_an_unknown_cell_is_refused_listing_the_cells(tmp_path, capsys):
    assert main(["study", "smalldetail", "--out", str(tmp_path), "--status", "--cell", "nope/x"]) == 2
    err = capsys.readouterr().err
    assert "--cell nope/x: no such cell" in err and "smalldetail-llava/smalldetail/png/always" in err


def test_no_report_is_written_when_no_cell_is_complete(tmp_path, capsys):
    said = []
    assert study_exec.write_report([], tmp_path / "report", 0, said.append) is False
    assert said == ["no cell is complete: no report written"] and not (tmp_path / "report").exists()
    assert main(["study", "smalldetail", "--out", str(tmp_path), "--report"]) == 1
    assert "no cell is complete" in capsys.readouterr().out and not (tmp_path / "report").exists()


# ----- executors' settings ---------------------------------------------------------------------
def test_the_local_pool_pins_each_cell_to_its_own_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4")
    ex = study_exec.Executor("local", jobs=8, gpus_per_cell=2)
    assert study_exec.slots(ex) == [{"CUDA_VISIBLE_DEVICES": "0,1"}, {"CUDA_VISIBLE_DEVICES": "2,3"}]
    assert study_exec.slots(study_exec.Executor("local", jobs=3)) == [{"CUDA_VISIBLE_DEVICES": g} for g in "012"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU: N processes, nothing pinned
    assert study_exec.slots(study_exec.Executor("local", jobs=3)) == [{}, {}, {}]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(study.StudyError, match="--gpus-per-cell 2: only 1 GPU"):
        study_exec.slots(study_exec.Executor("local", jobs=2, gpus_per_cell=2))


def test_slurm_resources_come_from_the_file_and_the_command_line_overrides_them(tmp_path):
    spec = study.load_study(write_study(tmp_path, slurm={"partition": "gpu", "gpus_per_cell": 1, "time_min": 120,
                                                         "sbatch": {"qos": "high"}}))
    args = _study_args(["--executor", "slurm", "--gpus-per-cell", "4", "--account", "proj", "--sbatch",
                        "constraint=a100", "--sbatch", "exclusive", "--jobs", "8", "--out", str(tmp_path)])
    from collab_eval.cli import study_executor
    ex = study_executor(args, spec)
    assert (ex.slurm.partition, ex.slurm.gpus_per_cell, ex.slurm.time_min, ex.slurm.account) == ("gpu", 4, 120, "proj")
    params = study_exec.slurm_executor(ex.slurm, tmp_path, "s", ex.jobs)._executor.parameters
    assert params["partition"] == "gpu" and params["gpus_per_node"] == 4 and params["time"] == 120
    assert params["account"] == "proj" and params["array_parallelism"] == 8
    assert params["additional_parameters"] == {"qos": "high", "constraint": "a100", "exclusive": True}
    from submitit.slurm.slurm import _make_sbatch_string
    script = _make_sbatch_string(command="x", folder=tmp_path, **params)
    assert "#SBATCH --exclusive\n" in script and "#SBATCH --qos=high\n" in script


def _study_args(extra: list[str]):
    import argparse

    from collab_eval import cli
    captured = {}

    def capture(args):
        captured["args"] = args
        return 0
    original = cli.run_study
    cli.run_study = capture
    try:
        cli.main(["study", "smalldetail", *extra])
    finally:
        cli.run_study = original
    assert isinstance(captured["args"], argparse.Namespace)
    return captured["args"]


def test_options_of_another_executor_are_refused(tmp_path, capsys):
    assert main(["study", "smalldetail", "--out", str(tmp_path), "--partition", "gpu", "--dry-run"]) == 2
    assert "are for --executor slurm" in capsys.readouterr().err
    assert main(["study", "smalldetail", "--out", str(tmp_path), "--jobs", "2", "--dry-run"]) == 2
    assert "are for --executor local or slurm" in capsys.readouterr().err


def test_a_claim_names_its_job_once_submitted(tmp_path):
    claim = study_claims.new_claim()
    study_claims.write_claim(tmp_path, claim.with_job("12_3"))
    back = study_claims.read_claim(tmp_path)
    assert back.token == claim.token and back.holder.job == "12_3" and back.holder.pid == os.getpid()
