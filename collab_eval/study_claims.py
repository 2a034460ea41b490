"""Who may write a study folder, and which process or job holds each cell.

A study has one writer: the ``collab-eval study`` command that holds ``OUT/.study.lock``
(``flock``; the kernel drops it when that process ends, however it ends, so a dead holder
never blocks; the holder's host, pid and start are written into the file for the refusal's
message). Only that command hands out cells: before a cell runs it writes the cell's
``claim.json`` with a fresh random token and the holder (the study process itself, or, for a
Slurm cell, the job id once submitted). The process that runs the cell (in the study, a pool
worker, or a Slurm job on any node) runs it only if the claim still holds its own token, so a
job left over from an earlier submission finds another token and ends without touching the
cell. A claim is replaced only when its holder is known dead:

- a Slurm job is alive while ``squeue`` knows it in a non-final state (PENDING, RUNNING,
  COMPLETING, REQUEUED, ...): a shared file system cannot tell this across nodes, the
  scheduler can;
- a process on this machine is alive while its pid runs with the same start time (a reused pid
  is another process);
- a process on another machine without a job id, or a job when ``squeue`` cannot be asked:
  unknown, so the cell is left alone and the message says how to release it by hand.

Besides, the process running a cell holds ``flock`` on the cell's ``.cell.lock`` for as long
as its lmms-eval runs (the lmms-eval child inherits the descriptor), and lmms-eval's own run
lock (``collab_eval.run_session``) refuses a second session of the same run.
"""
from __future__ import annotations

import fcntl
import json
import os
import secrets
import socket
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

# Slurm job states in which the job no longer runs anything (squeue's %T).
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                "DEADLINE", "SPECIAL_EXIT", "REVOKED"}


class StudyBusy(RuntimeError):
    """Another live ``collab-eval study`` writes the same folder."""


def host() -> str:
    return socket.gethostname()


def process_start(pid: int) -> str | None:
    """The process's start (boot id and clock ticks since boot), or None when it does not run."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    return f"{boot}:{stat.rsplit(')', 1)[1].split()[19]}"


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Holder:
    """A process (host, pid, start) and, for a Slurm cell, its job id ("123_4")."""
    host: str
    pid: int
    start: str | None = None
    job: str | None = None
    since: str = ""

    @classmethod
    def me(cls, job: str | None = None) -> "Holder":
        return cls(host(), os.getpid(), process_start(os.getpid()), job, now())

    def describe(self) -> str:
        where = f"job {self.job}" if self.job else f"process {self.pid} on {self.host}"
        return f"{where}, since {self.since}" if self.since else where


def job_state(job: str) -> tuple[str | None, str]:
    """(squeue's state of the job, its node list); state None when Slurm no longer knows the
    job. Raises OSError when squeue cannot be asked."""
    try:
        done = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T|%N"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as err:
        raise OSError(f"squeue: {err}") from None
    if done.returncode != 0:
        if "Invalid job id" in done.stderr:
            return None, ""
        raise OSError(f"squeue -j {job}: {done.stderr.strip() or f'exit status {done.returncode}'}")
    for line in done.stdout.splitlines():
        state, _, nodes = line.partition("|")
        if state.strip():
            return (None if state.strip() in FINAL_STATES else state.strip()), nodes.strip()
    return None, ""


def alive(holder: Holder) -> bool | None:
    """True, False, or None when this machine cannot tell."""
    if holder.job:
        try:
            return job_state(holder.job)[0] is not None
        except OSError:
            pass
    if holder.host == host():
        return holder.start is not None and process_start(holder.pid) == holder.start
    return None


# ----- the study's lock -------------------------------------------------------------------------
class StudyLock:
    """``OUT/.study.lock``, held by the one command that writes the study."""

    def __init__(self, fd: int):
        self._fd = fd

    @classmethod
    def take(cls, out: Path, command: str = "") -> "StudyLock":
        out.mkdir(parents=True, exist_ok=True)
        path = out / ".study.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                holder = f"{Holder(**data['holder']).describe()}: {data.get('command', '')}".rstrip(": ")
            except (OSError, ValueError, KeyError, TypeError):
                holder = "another process"
            raise StudyBusy(f"{out} is being run by another collab-eval study ({holder}); wait for it, or stop it "
                            "(see its cells with --status)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"holder": asdict(Holder.me()), "command": command}).encode() + b"\n", 0)
        return cls(fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# ----- a cell's claim ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Claim:
    token: str
    holder: Holder

    def with_job(self, job: str) -> "Claim":
        return Claim(self.token, Holder(self.holder.host, self.holder.pid, self.holder.start, job, now()))


def claim_path(folder: Path) -> Path:
    return Path(folder) / "claim.json"


def read_claim(folder: Path) -> Claim | None:
    try:
        data = json.loads(claim_path(folder).read_text(encoding="utf-8"))
        return Claim(str(data["token"]), Holder(**data["holder"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return Claim("", Holder("", 0))  # unreadable: treated as held by nobody alive


def write_json(path: Path, data: dict) -> None:
    """Write-then-rename: a reader sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_claim(folder: Path, claim: Claim) -> None:
    write_json(claim_path(folder), {"token": claim.token, "holder": asdict(claim.holder)})


def new_claim() -> Claim:
    return Claim(secrets.token_hex(8), Holder.me())


# ----- the process running a cell ---------------------------------------------------------------
class CellBusy(RuntimeError):
    """Another process runs this cell now."""


def hold_cell(folder: Path, wait: float = 0.0) -> int:
    """Take ``.cell.lock`` (waiting up to ``wait`` seconds: a killed study's lmms-eval child may
    still be ending); returns the descriptor, to pass on to lmms-eval and close at the end."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".cell.lock", os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise CellBusy(f"{folder}: another process runs this cell now") from None
            time.sleep(0.5)
