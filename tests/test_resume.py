"""Run identity and resume: a run killed halfway and rerun with resume=true is one run of
exactly its samples, and lmms-eval's results equal an uninterrupted run's."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from collab_eval import run_session
from collab_eval.run_session import (
    RunFinished,
    RunStarted,
    append_event,
    new_run_id,
    open_run,
    plan_run,
    settings_fingerprint,
)
from collab_eval.shipped import TASKS_DIR
from tests.helpers import LMMS_EVAL, records, results_json, run_lmms_eval, samples

SETTINGS = {"adapter": "collab_llava", "model": "/ckpt", "policy": "always", "threshold": 1.0, "rate": 0.5,
            "seed": 0, "codec": "png", "score": "max", "layer": None, "max_new_tokens": 32, "dtype": "auto"}


def record_line(run_id, doc_id, error=None, task="t"):
    return json.dumps({"run_id": run_id, "task": task, "doc_id": doc_id, "answer": f"a{doc_id}",
                       "min_entropy": [0.1, 0.2], "bytes_total": 10 * doc_id, "flops_total": 1, "retransmitted": True,
                       "doc": {"question_id": doc_id}, "error": error}) + "\n"


def start(directory, run_id, settings, session, world_size=1):
    append_event(directory, RunStarted(run_id=run_id, session=session, world_size=world_size,
                                       settings=settings_fingerprint(settings)))


# ---- fast: the pieces -------------------------------------------------------
def test_run_ids_made_together_never_collide():
    ids = [new_run_id("collab_llava") for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"collab_llava-\d{8}T\d{6}\.\d{6}Z-[0-9a-f]{8}", i) for i in ids)


def test_resume_picks_the_newest_run_with_the_same_settings(tmp_path):
    start(tmp_path, "old", SETTINGS, "2026-01-01T00:00:00.000000Z")
    start(tmp_path, "newer", SETTINGS, "2026-01-02T00:00:00.000000Z")
    start(tmp_path, "other-codec", {**SETTINGS, "codec": "jpeg:5"}, "2026-01-03T00:00:00.000000Z")
    plan = plan_run(tmp_path, "collab_llava", SETTINGS, run_id=None, resume=True)
    assert (plan.run_id, plan.resumed, plan.error) == ("newer", True, None)
    # threshold=inf is a setting like any other (stored as "inf"), and matches itself only
    start(tmp_path, "never", {**SETTINGS, "policy": "threshold", "threshold": float("inf")},
          "2026-01-04T00:00:00.000000Z")
    inf = plan_run(tmp_path, "collab_llava", {**SETTINGS, "policy": "threshold", "threshold": float("inf")},
                   run_id=None, resume=True)
    assert inf.run_id == "never"
    fresh = plan_run(tmp_path, "collab_llava", {**SETTINGS, "score": "mean"}, run_id=None, resume=True)
    assert not fresh.resumed and fresh.run_id.startswith("collab_llava-") and "holds no run" in fresh.notes[0]


def test_without_resume_an_unfinished_run_says_how_to_resume_it(tmp_path):
    start(tmp_path, "killed", SETTINGS, "s1")
    (tmp_path / "killed.rank0.jsonl").write_text(record_line("killed", 0) + record_line("killed", 1))
    plan = plan_run(tmp_path, "collab_llava", SETTINGS, run_id=None, resume=False)
    assert not plan.resumed and plan.run_id != "killed"
    assert "unfinished run killed" in plan.notes[0] and "(2 samples recorded)" in plan.notes[0]
    assert "add resume=true to --model_args (or run_id=killed,resume=true)" in plan.notes[0]
    # once every rank of its last session finished, it is not offered again
    append_event(tmp_path, RunFinished(run_id="killed", session="s1", rank=0))
    assert plan_run(tmp_path, "collab_llava", SETTINGS, run_id=None, resume=False).notes == ()


def test_a_given_run_id_is_never_mixed_with_another_run(tmp_path):
    start(tmp_path, "mine", SETTINGS, "s1")
    taken = plan_run(tmp_path, "collab_llava", SETTINGS, run_id="mine", resume=False)
    assert "run_id=mine: records_dir=" in taken.error and "add resume=true" in taken.error
    other = plan_run(tmp_path, "collab_llava", {**SETTINGS, "codec": "jpeg:5"}, run_id="mine", resume=True)
    assert "run_id=mine was started with other settings (codec: 'png' then, 'jpeg:5' now)" in other.error
    assert plan_run(tmp_path, "collab_llava", SETTINGS, run_id="mine", resume=True).resumed


def test_tidying_keeps_each_good_sample_once_across_ranks(tmp_path):
    (tmp_path / "r.rank0.jsonl").write_text(record_line("r", 0) + record_line("r", 1, error="image is empty (0 bytes)")
                                            + record_line("r", 2)[:40])  # killed mid-write
    (tmp_path / "r.rank1.jsonl").write_text(record_line("r", 3) + record_line("r", 0))  # a repeat of doc 0
    (tmp_path / "other.rank0.jsonl").write_text(record_line("other", 9))
    dropped = run_session.tidy(tmp_path, "r")
    assert dropped == {"failed": 1, "partial": 1, "repeated": 1}
    assert (tmp_path / "r.rank0.jsonl").read_text() == record_line("r", 0)
    assert (tmp_path / "r.rank1.jsonl").read_text() == record_line("r", 3)
    done = run_session.answered(tmp_path, "r")
    assert sorted(done) == [("t", 0), ("t", 3)]
    assert done[("t", 3)] == run_session.RecordedAnswer("a3", 2, 30, 1, True)


HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT | os.O_APPEND)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("locked", flush=True)
time.sleep(600)
"""


def test_a_running_run_refuses_a_second_process_until_its_holder_dies(tmp_path):
    """A live process holding the run (here: a plain process holding the journal's lock, as
    rank 0 does) makes open_run refuse, naming the run and that process; once it is killed
    with SIGKILL the same resume goes ahead."""
    start(tmp_path, "busy", SETTINGS, "s1")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "busy.run.ndjson")], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        append_event(tmp_path, RunStarted(run_id="busy", session="s2", settings=settings_fingerprint(SETTINGS),
                                          pid=holder.pid, host="edge-box"))
        for run_id in ("busy", None):  # named, or found by resume=true
            refused, _, lock = open_run(tmp_path, "collab_llava", SETTINGS, run_id=run_id, resume=True, world_size=1)
            assert refused.error == (f"run busy is running now (process {holder.pid} on edge-box, started s2); "
                                     "wait for it to finish before resuming it, or start a new run") and lock is None
    finally:
        holder.kill()
        holder.wait()
    resumed, log, lock = open_run(tmp_path, "collab_llava", SETTINGS, run_id=None, resume=True, world_size=1)
    assert (resumed.run_id, resumed.resumed, resumed.error) == ("busy", True, None)
    assert "resuming run busy" in log[-1]
    lock.release()


# ---- fast: a session whose model does not load -------------------------------
def not_a_checkpoint(tmp_path) -> tuple[str, Exception]:
    """A local directory that passes the model args' check but holds no model, and the error
    the family's server raises when it loads it (what the adapter must raise, unchanged)."""
    from model_adapters.llava import CollabLlava
    empty = tmp_path / "empty-checkpoint"
    empty.mkdir()
    with pytest.raises(Exception) as direct:
        CollabLlava.server_class(str(empty), name=CollabLlava.model_id)
    return str(empty), direct.value


def test_a_run_whose_model_does_not_load_leaves_nothing_in_records_dir(tmp_path):
    from model_adapters.llava import CollabLlava
    pretrained, error = not_a_checkpoint(tmp_path)
    records_dir = tmp_path / "records"
    with pytest.raises(type(error)) as raised:
        CollabLlava(pretrained=pretrained, records_dir=str(records_dir), policy="always")
    assert str(raised.value) == str(error)
    assert list(records_dir.iterdir()) == []  # neither the run's journal nor its (empty) records file


def test_a_resumed_run_whose_model_does_not_load_keeps_its_files_and_is_not_locked(tmp_path):
    from collab_eval.run_settings import RunSettings
    from model_adapters.llava import CollabLlava
    pretrained, error = not_a_checkpoint(tmp_path)
    records_dir = tmp_path / "records"
    given = {"pretrained": pretrained, "records_dir": str(records_dir), "policy": "always"}
    settings = RunSettings.parse(given, CollabLlava.server_class.family_args).of_run(CollabLlava.model_id)
    start(records_dir, "earlier", settings, "s1")
    (records_dir / "earlier.rank0.jsonl").write_text(record_line("earlier", 0) + record_line("earlier", 1))
    append_event(records_dir, RunFinished(run_id="earlier", session="s1", rank=0, requests=2, run_now=2))
    before = {p.name: p.read_bytes() for p in records_dir.iterdir()}
    with pytest.raises(type(error)) as raised:
        CollabLlava(**given, resume="true")
    assert str(raised.value) == str(error)
    assert {p.name: p.read_bytes() for p in records_dir.iterdir()} == before  # records and journal as they were
    again, _, lock = open_run(records_dir, CollabLlava.model_id, settings, run_id=None, resume=True, world_size=1)
    assert (again.run_id, again.resumed, again.error) == ("earlier", True, None)  # the lock was released
    lock.release()


# ---- slow: through lmms-eval ------------------------------------------------
ARGS = "pretrained=smalldetail-llava,policy=always"


def run_ids_of(records_dir: Path) -> set[str]:
    return ({r["run_id"] for r in records(records_dir)}
            | {p.name.split(".rank")[0] for p in records_dir.glob("*.rank*.jsonl")})


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    proc = run_lmms_eval("collab_llava", f"{ARGS},records_dir={out / 'records'}", "smalldetail_read", out,
                         extra=("--limit", "60"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.slow
def test_a_run_killed_halfway_resumes_into_one_run_with_the_same_results(tmp_path, uninterrupted):
    records_dir = tmp_path / "records"
    cmd = [LMMS_EVAL, "--model", "collab_llava", "--model_args", f"{ARGS},records_dir={records_dir}",
           "--tasks", "smalldetail_read", "--include_path", str(TASKS_DIR), "--output_path", str(tmp_path / "killed"),
           "--log_samples", "--limit", "60", "--verbosity", "DEBUG"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        files = list(records_dir.glob("*.rank0.jsonl"))
        if files and files[0].read_bytes().count(b"\n") >= 20:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = len(records(records_dir))
    assert 20 <= killed_at < 60

    out = tmp_path / "resumed"
    proc = run_lmms_eval("collab_llava", f"{ARGS},records_dir={records_dir},resume=true", "smalldetail_read", out,
                         extra=("--limit", "60"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{killed_at} samples already recorded are not run again" in proc.stdout + proc.stderr

    recs = records(records_dir)
    assert len(recs) == 60 and sorted(r["doc_id"] for r in recs) == list(range(60))
    (run_id,) = run_ids_of(records_dir)  # one run, in every record and file name
    assert {s["token_counts"][0]["run_id"] for s in samples(out, "smalldetail_read")} == {run_id}

    resumed = results_json(out)["results"]["smalldetail_read"]
    whole = results_json(uninterrupted)["results"]["smalldetail_read"]
    for metric in ("exact_match,none", "bytes_total,none", "flops_total,none", "retransmitted,none"):
        assert resumed[metric] == whole[metric], metric
    answers = {r["doc_id"]: r["answer"] for r in records(uninterrupted / "records")}
    assert {r["doc_id"]: r["answer"] for r in recs} == answers


@pytest.mark.slow
def test_a_second_process_cannot_append_to_a_running_run(tmp_path):
    """While a run is running, the same command with resume=true is refused before its model
    loads, in one line naming the run and the process; the first run ends with each of its
    samples recorded once."""
    records_dir = tmp_path / "records"
    cmd = [LMMS_EVAL, "--model", "collab_llava", "--model_args", f"{ARGS},records_dir={records_dir}",
           "--tasks", "smalldetail_read,smalldetail_exist", "--include_path", str(TASKS_DIR),
           "--output_path", str(tmp_path / "first"),
           "--verbosity", "DEBUG"]  # 300 samples: long enough to be caught running
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and first.poll() is None and not list(records_dir.glob("*.rank0.jsonl")):
        time.sleep(0.02)
    (journal,) = records_dir.glob("*.run.ndjson")
    run_id = journal.name.split(".run.")[0]
    second = run_lmms_eval("collab_llava", f"{ARGS},records_dir={records_dir},resume=true", "smalldetail_read",
                           tmp_path / "second", extra=("--limit", "60"))
    assert first.wait(timeout=900) == 0
    assert second.returncode == 1  # the CLI's failure exit under --verbosity DEBUG
    assert f"run {run_id} is running now (process {first.pid} on " in second.stdout + second.stderr
    assert "records ->" not in second.stdout + second.stderr and not (tmp_path / "second").exists()
    recs = records(records_dir)
    assert len(recs) == len({(r["task"], r["doc_id"]) for r in recs}) == 300 and run_ids_of(records_dir) == {run_id}


ACCELERATE = str(Path(sys.executable).with_name("accelerate"))


@pytest.mark.slow
def test_a_one_process_run_resumes_under_two_processes(tmp_path, uninterrupted):
    records_dir = tmp_path / "records"
    first = run_lmms_eval("collab_llava", f"{ARGS},records_dir={records_dir}", "smalldetail_read", tmp_path / "first",
                          extra=("--limit", "10"))
    assert first.returncode == 0, first.stderr[-3000:]
    launcher = (ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "lmms_eval")
    out = tmp_path / "second"
    second = run_lmms_eval("collab_llava", f"{ARGS},records_dir={records_dir},resume=true", "smalldetail_read", out,
                           extra=("--limit", "20"), launcher=launcher)
    assert second.returncode == 0, second.stderr[-3000:]

    (run_id,) = run_ids_of(records_dir)
    per_rank = {p.name.rsplit(".", 2)[-2]: p.read_text().count("\n") for p in records_dir.glob("*.rank*.jsonl")}
    assert per_rank == {"rank0": 15, "rank1": 5}  # 10 from the first session, 5 + 5 new
    recs = records(records_dir)
    assert sorted(r["doc_id"] for r in recs) == list(range(20))
    whole = {r["doc_id"]: r["answer"] for r in records(uninterrupted / "records")}
    assert {r["doc_id"]: r["answer"] for r in recs} == {i: whole[i] for i in range(20)}
    whole_samples = [s for s in samples(uninterrupted, "smalldetail_read") if s["doc_id"] < 20]
    expected = sum(s["exact_match"] for s in whole_samples) / 20
    assert results_json(out)["results"]["smalldetail_read"]["exact_match,none"] == pytest.approx(expected)
    journal = [json.loads(line) for line in (records_dir / f"{run_id}.run.ndjson").read_text().splitlines()]
    assert [(e["event"], e.get("world_size"), e.get("resumed")) for e in journal if e["event"] == "start"] == \
        [("start", 1, False), ("start", 2, True)]
    assert sorted(e["rank"] for e in journal
                  if e["event"] == "finish" and e["session"] == journal[-1]["session"]) == [0, 1]


@pytest.mark.slow
def test_an_infinite_threshold_runs_as_never(tmp_path):
    out = tmp_path / "out"
    proc = run_lmms_eval("collab_llava", f"pretrained=smalldetail-llava,policy=threshold,threshold=inf,"
                         f"records_dir={out / 'records'}", "smalldetail_read", out, extra=("--limit", "5"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = records(out / "records")
    assert len(recs) == 5 and not any(r["retransmitted"] for r in recs)
    assert {r["policy_args"]["threshold"] for r in recs} == {"inf"}
    assert results_json(out)["results"]["smalldetail_read"]["retransmitted,none"] == 0.0
    # The report labels the run by its threshold, written "inf" in the records.
    report = subprocess.run([str(Path(sys.executable).with_name("collab-eval")), "report", str(out), "--out",
                             str(tmp_path / "report")], capture_output=True, text=True, timeout=600)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "threshold τ=inf (max)" in (tmp_path / "report" / "report.md").read_text()


def file_size_limit(nbytes):
    """In the child: writes past ``nbytes`` fail with EFBIG, as on a full disk."""
    def apply():
        import resource
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, resource.RLIM_INFINITY))
    return apply


@pytest.mark.slow
def test_a_full_disk_stops_the_run_and_resume_finishes_it(tmp_path):
    records_dir = tmp_path / "records"
    cmd = [LMMS_EVAL, "--model", "collab_llava", "--model_args", f"{ARGS},records_dir={records_dir}",
           "--tasks", "smalldetail_read", "--include_path", str(TASKS_DIR), "--output_path", str(tmp_path / "full"),
           "--limit", "20", "--verbosity", "DEBUG"]
    full = subprocess.run(cmd, capture_output=True, text=True, timeout=900, preexec_fn=file_size_limit(20_000))
    (path,) = records_dir.glob("*.rank0.jsonl")
    assert full.returncode == 1  # the CLI's failure exit under --verbosity DEBUG
    assert f"cannot write records to {path}: File too large. The run stops here" in full.stdout + full.stderr
    assert not (tmp_path / "full").exists()  # no results from a run that stopped
    stopped_at = len(records(records_dir))  # every line complete: records() parses each
    assert 1 <= stopped_at < 20 and path.read_bytes().endswith(b"\n")

    proc = run_lmms_eval("collab_llava", f"{ARGS},records_dir={records_dir},resume=true", "smalldetail_read",
                         tmp_path / "resumed", extra=("--limit", "20"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(r["doc_id"] for r in records(records_dir)) == list(range(20))
    assert len(run_ids_of(records_dir)) == 1
