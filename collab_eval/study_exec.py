"""Running a study's cells: one after another, a local pool of N at once, or Slurm (one job
array through submitit); the state of every cell (``--status``); the report when the last
cell completes.

Whatever runs a cell (the study command itself, a pool worker, a Slurm job on some node) runs
``run_cell_job``: it holds the cell (``study_claims``), decides then whether to start or
resume (so a requeued or resubmitted job continues the records of the one before), starts
lmms-eval with the allocation's Slurm and torch.distributed variables removed, and writes the
outcome into the cell's ``status.json``.
"""
from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from collab_eval import study_claims as claims
from collab_eval.study import (
    Cell,
    Launcher,
    SlurmSpec,
    Study,
    StudyError,
    cell_name,
    cell_state,
    cells,
    check_names,
    command,
    ends_with_parent,
    environment,
    generate_costed,
    lmms_eval_args,
    plan,
    select,
    write_manifest,
)

# Variables of a Slurm allocation and of torch.distributed (torchrun, accelerate, MPI/PMI
# launchers) that must not reach a cell's lmms-eval: accelerate would try to join a rendezvous
# that is not there, or take the job's task rank as its own.
LEAKING_PREFIXES = ("SLURM_", "SLURMD_", "SRUN_", "SBATCH_", "SALLOC_", "TORCHELASTIC_", "TORCH_ELASTIC_", "PMI_",
                    "PMIX_", "OMPI_COMM_WORLD_", "MV2_COMM_WORLD_")
LEAKING = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK",
           "ROLE_WORLD_SIZE", "ROLE_NAME", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCH_NCCL_ASYNC_ERROR_HANDLING"}
SUBMITIT_FOLDER = "slurm"  # OUT/slurm/<job id>_*: submitit's pickles and each job's stdout/stderr


def cell_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in environment().items() if k not in LEAKING and not k.startswith(LEAKING_PREFIXES)}
    env.update(extra or {})
    return env


def my_job() -> str | None:
    """This process's Slurm job as squeue names it ("123_4" for an array task), or None."""
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


# ----- a cell's status file ---------------------------------------------------------------------
def status_path(folder: Path) -> Path:
    return Path(folder) / "status.json"


def read_status(folder: Path) -> dict:
    import json
    try:
        data = json.loads(status_path(folder).read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


ERROR_LINE = re.compile(r"error|exception|traceback|refused|killed", re.I)


def last_error_line(log: Path) -> str:
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        if ERROR_LINE.search(line) and not line.startswith("$ "):
            return line.strip()[:400]
    return ""


# ----- one cell ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class CellJob:
    """Everything a process needs to run one cell, wherever it runs (picklable)."""
    cell: Cell
    token: str
    fresh: tuple[str, ...]  # the command of a cell with nothing recorded
    resumed: tuple[str, ...]  # ... and of one to continue (resume=true)
    manifest: tuple[str, ...]  # its lmms-eval arguments, for cell.json
    study_folders: tuple[Path, ...] = ()  # every cell of the study: the report when the last completes
    seeds: int = 20
    report_dir: Path | None = None  # set for Slurm jobs
    env: tuple[tuple[str, str], ...] = ()
    wait_s: float = 60.0  # for a killed predecessor's lmms-eval to end


@dataclass(frozen=True)
class CellOutcome:
    state: Literal["complete", "failed", "busy", "superseded"]
    message: str
    exit: int | None = None


def run_cell_job(job: CellJob, say=None) -> CellOutcome:
    """Run (or resume) one cell, if it is still this job's to run."""
    say = say or (lambda message: print(message, flush=True))
    cell = job.cell
    log = cell.folder / "lmms-eval.log"
    me = claims.Holder.me(job=my_job())
    try:
        fd = claims.hold_cell(cell.folder, wait=job.wait_s)
    except claims.CellBusy as err:
        return CellOutcome("busy", str(err))
    try:
        claim = claims.read_claim(cell.folder)
        if claim is None or claim.token != job.token:
            holder = f" (it is now {claim.holder.describe()}'s)" if claim and claim.token else ""
            return CellOutcome("superseded", f"{cell.label}: handed to another run of the study{holder}; left alone")
        before = read_status(cell.folder)
        if before.get("state") == "running":
            other = claims.Holder(**before.get("holder", {"host": "", "pid": 0}))
            if (other.job or None) != me.job and other.pid != me.pid and claims.alive(other):
                return CellOutcome("busy", f"{cell.label}: {other.describe()} runs it now")
        state = cell_state(cell)
        if state == "complete":
            return CellOutcome("complete", f"{cell.label}: complete")
        argv = list(job.resumed if state == "interrupted" else job.fresh)
        write_manifest(cell, list(job.manifest))
        claims_status = status_path(cell.folder)
        claims.write_json(claims_status, {"state": "running", "holder": me.__dict__, "started": claims.now(),
                                          "log": str(log), "resumed": state == "interrupted", "token": job.token})
        say(f"{cell.label}: {'resumed' if state == 'interrupted' else 'running'}"
            f"{f' (job {me.job})' if me.job else ''} (log: {log})")
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"$ {' '.join(map(_quote, argv))}\n" + (f"# Slurm job {me.job} on {me.host}\n" if me.job else ""))
            f.flush()
            code = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env=cell_environment(dict(job.env)),
                                  pass_fds=(fd,), preexec_fn=ends_with_parent(os.getpid())).returncode
        complete = cell_state(cell) == "complete"
        claims.write_json(claims_status, {"state": "complete" if complete else "failed", "exit": code,
                                          "log": str(log), "last_error": "" if complete else last_error_line(log),
                                          "holder": me.__dict__, "ended": claims.now(), "token": job.token})
    finally:
        os.close(fd)
    if not complete:
        return CellOutcome("failed", f"{cell.label}: FAILED (exit status {code}, not complete); see {log}", code)
    if job.report_dir is not None and all(cell_state_of(f) == "complete" for f in job.study_folders):
        write_report(list(job.study_folders), job.report_dir, job.seeds, say)
    return CellOutcome("complete", f"{cell.label}: complete", code)


def _quote(arg: str) -> str:
    import shlex
    return shlex.quote(arg)


def cell_state_of(folder: Path) -> str:
    """cell_state for a folder alone (the report's check from inside a job)."""
    from collab_eval.study import cell_state as state_of
    return state_of(_FolderCell(Path(folder)))


@dataclass(frozen=True)
class _FolderCell:
    folder: Path

    @property
    def records_dir(self) -> Path:
        return self.folder / "records"


class SlurmCell:
    """The job array's callable: run the cell; on the time limit or preemption signal, requeue
    (submitit's checkpointing) so that the same job resumes the cell."""

    def __call__(self, job: CellJob) -> str:
        outcome = run_cell_job(job)
        print(outcome.message, flush=True)
        if outcome.state == "failed":
            raise RuntimeError(outcome.message)
        return outcome.state

    def checkpoint(self, job: CellJob):
        from submitit.helpers import DelayedSubmission
        return DelayedSubmission(self, job)


# ----- a cell's state, for --status and the monitor ---------------------------------------------
def describe(cell: Cell) -> tuple[str, str]:
    """(state, one line): complete, running, queued, failed, interrupted, claimed or not started."""
    state = cell_state(cell)
    if state == "complete":
        return "complete", "complete"
    status = read_status(cell.folder)
    claim = claims.read_claim(cell.folder)
    if claim and claim.token and claim.holder.job:
        try:
            job_state, nodes = claims.job_state(claim.holder.job)
        except OSError as err:
            job_state, nodes = None, ""
            if status.get("state") not in ("complete", "failed"):
                return "unknown", f"job {claim.holder.job}: Slurm cannot be asked ({err})"
        if job_state == "PENDING":
            return "queued", f"queued (job {claim.holder.job})"
        if job_state is not None:
            return "running", f"{job_state.lower()} (job {claim.holder.job}, node {nodes or '?'})"
    elif claim and claim.token and status.get("state") == "running":
        holder = claims.Holder(**status.get("holder", {"host": "", "pid": 0}))
        live = claims.alive(holder)
        if live:
            return "running", f"running ({holder.describe()})"
        if live is None:
            return "unknown", f"claimed by {holder.describe()}, which this machine cannot check"
    elif claim and claim.token and status.get("token") != claim.token and claims.alive(claim.holder):
        return "queued", f"queued (in the study of {claim.holder.describe()})"  # handed out, not started yet
    killed = isinstance(status.get("exit"), int) and status["exit"] < 0  # scancel, time limit, preemption, kill
    if status.get("state") == "failed" and not killed:
        return "failed", (f"failed (exit status {status.get('exit')}; log: {status.get('log')}; last error: "
                          f"{status.get('last_error') or '(none found)'})")
    if state == "interrupted" or killed:
        how = f"killed by signal {-status['exit']}; " if killed else ""
        what = "records of a run; the next study command resumes it" if state == "interrupted" else \
            "nothing recorded; the next study command starts it"
        return "interrupted", f"interrupted ({how}{what})"
    return "new", "not started"


def status_lines(study: Study, out: Path, names: list[str] | None = None) -> tuple[list[str], bool]:
    grid = cells(study, Path(out).resolve())
    chosen = select(grid, names) if names else grid
    lines, done = [], True
    for cell in chosen:
        state, text = describe(cell)
        done &= state == "complete"
        lines.append(f"{cell_name(cell)}: {text}")
    return lines, done


# ----- executors ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Executor:
    """sequential: one cell after another in the study command; local: up to ``jobs`` cells at
    once on this machine (each pinned to ``gpus_per_cell`` GPUs where there are GPUs); slurm:
    one job per cell in one job array, ``slurm`` its resources, ``wait`` for them to end."""
    kind: Literal["sequential", "local", "slurm"] = "sequential"
    jobs: int = 1
    gpus_per_cell: int = 1
    slurm: SlurmSpec = field(default_factory=SlurmSpec)
    wait: bool = True
    poll_s: float = 5.0


def visible_gpus() -> list[str]:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else nvidia-smi's list."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [g.strip() for g in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip() and g.strip() != "-1"]
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def slots(executor: Executor) -> list[dict[str, str]]:
    """The pool's slots: an environment per slot (CUDA_VISIBLE_DEVICES on a GPU machine)."""
    gpus = visible_gpus()
    if not gpus:
        return [{} for _ in range(executor.jobs)]
    per = max(1, executor.gpus_per_cell)
    groups = [gpus[i:i + per] for i in range(0, len(gpus) - per + 1, per)][:executor.jobs]
    if not groups:
        raise StudyError(f"--gpus-per-cell {per}: only {len(gpus)} GPU(s) visible ({','.join(gpus)})")
    return [{"CUDA_VISIBLE_DEVICES": ",".join(g)} for g in groups]


def run_sequential(jobs: list[CellJob], say) -> list[CellOutcome]:
    outcomes = []
    for job in jobs:
        outcome = run_cell_job(job, say)
        if outcome.state != "complete":
            say(outcome.message)
        outcomes.append(outcome)
    return outcomes


def run_pool(jobs: list[CellJob], executor: Executor, say) -> list[CellOutcome]:
    free: queue.Queue = queue.Queue()
    pool_slots = slots(executor)
    for slot in pool_slots:
        free.put(slot)
    say(f"local pool: {len(pool_slots)} cell(s) at once"
        + (f", on GPUs {' | '.join(s['CUDA_VISIBLE_DEVICES'] for s in pool_slots)}" if pool_slots[0] else ""))

    def work(job: CellJob) -> CellOutcome:
        slot = free.get()
        try:
            outcome = run_cell_job(replace(job, env=tuple(slot.items())), say)
        finally:
            free.put(slot)
        say(outcome.message)
        return outcome

    with ThreadPoolExecutor(len(pool_slots)) as pool:
        return list(pool.map(work, jobs))


def slurm_executor(spec: SlurmSpec, out: Path, name: str, cells_at_once: int | None):
    try:
        import submitit
    except ImportError:  # declared in pyproject; an install without it gets this, not a traceback
        raise StudyError("--executor slurm needs submitit (pip install submitit)") from None
    ex = submitit.AutoExecutor(folder=out / SUBMITIT_FOLDER / "%j", cluster="slurm")
    params = {"name": f"collab-eval-{name}", "timeout_min": spec.time_min or 24 * 60, "nodes": 1,
              "tasks_per_node": 1,  # True: a flag (--exclusive); False: left out
              "slurm_additional_parameters": {k: v for k, v in spec.sbatch.items() if v is not False}}
    if spec.partition:
        params["slurm_partition"] = spec.partition
    if spec.gpus_per_cell:
        params["gpus_per_node"] = spec.gpus_per_cell
    if spec.cpus_per_cell:
        params["cpus_per_task"] = spec.cpus_per_cell
    if spec.mem_gb:
        params["mem_gb"] = spec.mem_gb
    if spec.account:
        params["slurm_account"] = spec.account
    if cells_at_once or spec.max_running:
        params["slurm_array_parallelism"] = cells_at_once or spec.max_running
    ex.update_parameters(**params)
    return ex


def submit_slurm(jobs: list[CellJob], executor: Executor, out: Path, name: str, say) -> dict[Path, str]:
    """Submit the cells as one job array; the claims name each cell's job. Returns folder -> job id."""
    ex = slurm_executor(executor.slurm, out, name, executor.jobs if executor.jobs > 1 else None)
    try:
        submitted = ex.map_array(SlurmCell(), jobs)
    except Exception as err:  # submitit's FailedJobError, sbatch's refusal: one line, the cells not claimed
        for job in jobs:
            claims.claim_path(job.cell.folder).unlink(missing_ok=True)
        raise StudyError(f"Slurm refused the job array: {str(err).strip().splitlines()[-1] if str(err) else err}") \
            from None
    ids = {}
    for job, handle in zip(jobs, submitted):
        claim = claims.read_claim(job.cell.folder)
        if claim is not None and claim.token == job.token:
            claims.write_claim(job.cell.folder, claim.with_job(handle.job_id))
        ids[job.cell.folder] = handle.job_id
        say(f"{job.cell.label}: submitted (job {handle.job_id}; log: {job.cell.folder / 'lmms-eval.log'})")
    return ids


def watch(watched: dict[Path, tuple[Cell, str]], poll_s: float, say) -> None:
    """Follow Slurm jobs until Slurm no longer knows any of them, saying each cell's changes."""
    last: dict[Path, str] = {}
    while watched:
        for folder, (cell, job) in list(watched.items()):
            try:
                job_state, _ = claims.job_state(job)
            except OSError as err:
                say(f"squeue: {err}; still waiting")
                job_state = "UNKNOWN"
            _, text = describe(cell)
            if text != last.get(folder):
                say(f"{cell.label}: {text}")
                last[folder] = text
            if job_state is None:
                del watched[folder]
        if watched:
            time.sleep(poll_s)


# ----- the study ---------------------------------------------------------------------------------
def run(study: Study, out: Path, executor: Executor | None = None, launcher: Launcher | None = None,
        limit: int | None = None, seeds: int = 20, names: list[str] | None = None, say=None,
        command_line: str = "") -> int:
    """Run every cell that is not complete (or those ``names`` chooses) with the executor,
    then the report over every complete cell. 0: every chosen cell complete (or, not waiting,
    submitted); 1: some did not complete."""
    say = say or (lambda message: print(message, flush=True))
    executor, launcher = executor or Executor(), launcher or Launcher()
    out = Path(out).resolve()
    lock = claims.StudyLock.take(out, command_line or " ".join(sys.argv))
    try:
        check_names(study)
        p = plan(study, out, launcher, limit)  # refuses a changed cell before anything runs
        chosen = {c.folder for c in (select([row[0] for row in p.cells], names) if names else [r[0] for r in p.cells])}
        generate_costed(study, out, say)
        folders = tuple(cell.folder for cell, _, _ in p.cells)
        jobs, watched, left = [], {}, []
        for cell, state, _ in p.cells:
            if cell.folder not in chosen:
                continue
            if state == "complete":
                say(f"{cell.label}: complete, skipped")
                continue
            claim = claims.read_claim(cell.folder)
            if claim is not None and claim.token:
                live = claims.alive(claim.holder)
                if live:
                    say(f"{cell.label}: {describe(cell)[1]}: held by {claim.holder.describe()}, left alone")
                    if claim.holder.job:
                        watched[cell.folder] = (cell, claim.holder.job)
                    else:
                        left.append(cell)
                    continue
                if live is None:
                    say(f"{cell.label}: held by {claim.holder.describe()}, which this machine cannot check; left "
                        f"alone (if it has ended, delete {claims.claim_path(cell.folder)} and run the study again)")
                    left.append(cell)
                    continue
            if state == "interrupted":
                say(f"{cell.label}: interrupted before, resumed with resume=true")
            new = claims.new_claim()
            claims.write_claim(cell.folder, new)
            manifest = lmms_eval_args(cell, out, limit, resume=False) + list(study.lmms_eval_args)
            jobs.append(CellJob(cell, new.token, tuple(command(cell, study, out, launcher, limit, resume=False)),
                                tuple(command(cell, study, out, launcher, limit, resume=True)), tuple(manifest),
                                folders, seeds, out / "report" if executor.kind == "slurm" else None))
        if executor.kind == "slurm":
            if jobs:
                ids = submit_slurm(jobs, executor, out, study.name, say)
                watched.update({j.cell.folder: (j.cell, ids[j.cell.folder]) for j in jobs})
            if not executor.wait:
                if not jobs:
                    say("nothing submitted")
                    return 0
                say(f"submitted; `collab-eval study FILE --out {out} --status` follows them; the last cell to "
                    "complete writes the report")
                return 0
            try:
                watch(watched, executor.poll_s, say)
            except KeyboardInterrupt:
                say("stopped waiting; the jobs go on in Slurm (collab-eval study ... --status shows them; the same "
                    "command waits for them again and writes the report)")
                raise
        elif executor.kind == "local":
            run_pool(jobs, executor, say)
        else:
            run_sequential(jobs, say)
        complete = [cell.folder for cell, _, _ in p.cells if cell_state(cell) == "complete"]
        write_report(complete, out / "report", seeds, say)
        failed = [cell for cell, _, _ in p.cells if cell.folder in chosen and cell_state(cell) != "complete"]
        if failed:
            say(f"{len(failed)} cell(s) not complete:\n" + "\n".join(f"  {cell_name(c)}: {describe(c)[1]}"
                                                                      for c in failed))
            return 1
        return 0
    finally:
        lock.release()


def write_report(folders: list[Path], report_dir: Path, seeds: int, say) -> bool:
    """The report over ``folders`` (complete cells) into ``report_dir``; nothing when there is
    no complete cell (an empty report would read as a result). One writer at a time."""
    import fcntl
    if not folders:
        say("no cell is complete: no report written")
        return False
    from collab_eval.analysis import report
    from collab_eval.analysis.summarised import summary_of
    report_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(report_dir.parent / ".report.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with summary_of([str(f) for f in folders], seeds, "study") as summary:
            paths = report.write(summary, report_dir)
            for path in paths.values():
                say(str(path))
            say("\n" + report.headline(summary))
    finally:
        os.close(fd)
    return True
