"""A run on disk: its identity, its journal, its lock, resuming it, and its record writer.

A run is one evaluation, however many processes (ranks) and however many times it was
resumed. Its id cannot collide: UTC time to the microsecond plus a random suffix, made on
rank 0 and shared with every rank. In ``records_dir`` a run is:

- ``<run_id>.rank<k>.jsonl``: the records each rank wrote (every session appends);
- ``<run_id>.run.ndjson``: its journal, one JSON line per event, appended: ``start`` (rank 0,
  at every session: settings, world size, the process) and ``finish`` (each rank, when
  lmms-eval's requests are all answered). A run is finished when every rank of its last
  session finished.

The settings decide what may be resumed: a run continues only a run started with the same
settings (adapter, checkpoint, policy and its arguments, codec, score, layer, token limit,
dtype, family args). A sample counts as done when some rank file of the run holds a complete
record of it without an error; before a resumed session appends, rank 0 rewrites
(atomically) any file of the run holding lines that do not count (a partial last line,
failed samples, repeats), so a run never holds a sample twice.

While a session runs, rank 0 holds an exclusive lock on the run's journal (``flock``: the
kernel drops it when the process ends, even by kill -9), so a second process that would
append to the same run is refused before its model loads. The other ranks of the session
take no lock.

A session that fails to start (its model does not load) is abandoned (``joined``): it leaves
nothing of its own in ``records_dir`` (a new run's files are removed, a resumed run's journal
goes back to what it was) and releases the lock; a record already written is never touched.
"""
from __future__ import annotations

import fcntl
import json
import os
import secrets
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ValidationError

from collab_eval.records import RecordWriteError, RecordWriter, json_number, record_path

JOURNAL_SUFFIX = ".run.ndjson"  # JSON lines, named so that globs for record files (*.jsonl) skip it
SampleKey = tuple[str, int]  # (task, doc_id): lmms-eval evaluates one split per task


# ----- the journal ---------------------------------------------------------------------------
class RunStarted(BaseModel):
    """A session of the run began (rank 0)."""
    event: Literal["start"] = "start"
    run_id: str
    session: str  # UTC start of the session: which finish events belong to it
    world_size: int = 1
    resumed: bool = False
    settings: dict = {}
    pid: int | None = None  # the process holding the run's lock (rank 0)
    host: str | None = None


class RunFinished(BaseModel):
    """A rank answered all of lmms-eval's requests in that session."""
    event: Literal["finish"] = "finish"
    run_id: str
    session: str
    rank: int = 0
    requests: int = 0
    run_now: int = 0  # samples answered in this session (the others were recorded before)
    seconds: float | None = None  # wall time of this rank's generate_until in the session (None: not kept)


def journal_path(directory: Path, run_id: str) -> Path:
    return Path(directory) / f"{run_id}{JOURNAL_SUFFIX}"


def append_event(directory: Path, event: RunStarted | RunFinished) -> None:
    """One line, appended in one write (several ranks append to the same journal)."""
    line = (json.dumps(event.model_dump(), sort_keys=True) + "\n").encode()
    fd = os.open(journal_path(directory, event.run_id), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_journal(path: Path) -> list[RunStarted | RunFinished]:
    """The journal's events (lines that are not one are skipped: a cut-off last line)."""
    events = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                data = json.loads(line)
                events.append((RunFinished if data.get("event") == "finish" else RunStarted).model_validate(data))
            except (ValueError, AttributeError, ValidationError):
                continue
    return events


@dataclass
class RunOnDisk:
    """A run as its journal tells it: its last session's start and which ranks finished it."""
    last_start: RunStarted
    finished_ranks: set[int]

    @property
    def finished(self) -> bool:
        return self.finished_ranks >= set(range(self.last_start.world_size))

    def recorded_samples(self, directory: Path) -> int:
        n = 0
        for path in run_files(directory, self.last_start.run_id):
            with open(path, "rb") as f:
                n += sum(1 for line in f if line.endswith(b"\n"))
        return n


def runs_on_disk(directory: Path) -> dict[str, RunOnDisk]:
    """Every run with a journal in ``directory``."""
    runs: dict[str, RunOnDisk] = {}
    for path in sorted(Path(directory).glob(f"*{JOURNAL_SUFFIX}")):
        for event in read_journal(path):
            if isinstance(event, RunStarted):
                runs[event.run_id] = RunOnDisk(event, set())
            elif event.run_id in runs and event.session == runs[event.run_id].last_start.session:
                runs[event.run_id].finished_ranks.add(event.rank)
    return runs


# ----- which run ---------------------------------------------------------------------------
def new_run_id(adapter: str) -> str:
    """``<adapter>-<UTC yyyymmddThhmmss.ffffff>Z-<8 hex>``: sortable by start, unique even for
    runs started in the same microsecond."""
    return f"{adapter}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S.%f}Z-{secrets.token_hex(4)}"


def settings_fingerprint(settings: dict) -> dict:
    """The settings as the journal stores them (JSON: infinities as "inf"/"-inf")."""
    return json.loads(json.dumps({k: json_number(v) for k, v in settings.items()}, sort_keys=True))


@dataclass(frozen=True)
class RunPlan:
    """What rank 0 decided, sent to every rank: which run, whether it continues one, what to
    tell the user, or why it cannot start."""
    run_id: str = ""
    session: str = ""
    resumed: bool = False
    notes: tuple[str, ...] = ()
    error: str | None = None


def plan_run(directory: Path, adapter: str, settings: dict, *, run_id: str | None, resume: bool) -> RunPlan:
    """Decide the run (rank 0 only). ``run_id``: the user's, or None for a new one;
    ``resume``: continue the newest run with the same settings (or ``run_id`` itself)."""
    session = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    fingerprint = settings_fingerprint(settings)
    runs = runs_on_disk(directory)
    if run_id is not None:
        if run_id not in runs and not run_files(directory, run_id):
            note = f"resume=true: records_dir holds no run {run_id} yet, so it starts now" if resume else None
            return RunPlan(run_id, session, False, (note,) if note else ())
        if not resume:
            return RunPlan(error=f"run_id={run_id}: records_dir={directory} already holds that run; add resume=true "
                                 "to continue it, or choose another run_id")
        if run_id not in runs:
            return RunPlan(error=f"run_id={run_id}: its journal {journal_path(directory, run_id).name} is missing, so "
                                 "its settings are unknown and it cannot be resumed")
        differ = differences(runs[run_id].last_start.settings, fingerprint)
        if differ:
            return RunPlan(error=f"run_id={run_id} was started with other settings ({differ}); resume it with the "
                                 "same model args, or choose another run_id")
        return RunPlan(run_id, session, True)
    same = sorted((r for r in runs.values() if r.last_start.settings == fingerprint),
                  key=lambda r: r.last_start.session)
    if resume and same:
        return RunPlan(same[-1].last_start.run_id, session, True)
    new_id = new_run_id(adapter)
    notes = []
    if resume:
        notes.append(f"resume=true: records_dir={directory} holds no run with these settings, so run {new_id} starts")
    unfinished = [r for r in same if not r.finished]
    if not resume and unfinished:
        last = unfinished[-1].last_start.run_id
        notes.append(f"records_dir={directory} holds the unfinished run {last} with these settings "
                     f"({unfinished[-1].recorded_samples(directory)} samples recorded). "
                     f"This starts a new run {new_id}; "
                     f"to continue {last} instead, add resume=true to --model_args (or run_id={last},resume=true).")
    return RunPlan(new_id, session, False, tuple(notes))


def differences(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new))
    return ", ".join(f"{k}: {old.get(k)!r} then, {new.get(k)!r} now" for k in keys if old.get(k) != new.get(k))


# ----- the lock ------------------------------------------------------------------------------
class RunLocked(RuntimeError):
    """Another live process is running this run."""


class RunLock:
    """The run's lock, held from ``take`` until ``release`` (or ``abandon``) or the end of the process."""

    def __init__(self, fd: int, path: Path):
        self._fd, self.path = fd, path
        self.journal_size = os.fstat(fd).st_size  # where this session's journal lines begin

    @classmethod
    def take(cls, directory: Path, run_id: str) -> "RunLock":
        """Raises RunLocked naming the holder when a live process holds the run."""
        path = journal_path(directory, run_id)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            starts = [e for e in read_journal(path) if isinstance(e, RunStarted)]
            holder = (f"process {starts[-1].pid} on {starts[-1].host}, started {starts[-1].session}"
                      if starts and starts[-1].pid else "another process")
            raise RunLocked(f"run {run_id} is running now ({holder}); wait for it to finish before resuming it, "
                            "or start a new run") from None
        return cls(fd, path)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def abandon(self) -> None:
        """Take this session's journal lines back and release: a journal that was empty when
        the lock was taken (a new run's) is removed, another is cut back to its size then."""
        try:
            if self._fd is not None:
                if self.journal_size:
                    os.ftruncate(self._fd, self.journal_size)
                else:
                    self.path.unlink(missing_ok=True)
        finally:
            self.release()


# ----- resuming ------------------------------------------------------------------------------
@dataclass(frozen=True)
class RecordedAnswer:
    """What lmms-eval gets back for a sample already answered in this run."""
    answer: str
    output_tokens: int
    bytes_total: int
    flops_total: int
    retransmitted: bool

    @classmethod
    def of(cls, record) -> "RecordedAnswer":
        """From a record (a SampleRecord, or a records-file line as a dict)."""
        get = record.get if isinstance(record, dict) else lambda name, default=None: getattr(record, name, default)
        return cls(get("answer", ""), len(get("min_entropy") or []), get("bytes_total", 0), get("flops_total", 0),
                   bool(get("retransmitted", False)))


def run_files(directory: Path, run_id: str) -> list[Path]:
    return sorted(Path(directory).glob(f"{run_id}.rank*.jsonl"))


def _done(line: bytes, seen: set[SampleKey]) -> tuple[SampleKey, dict] | None:
    """The sample a line completes, or None when the line does not count."""
    if not line.endswith(b"\n"):
        return None
    try:
        record = json.loads(line)
        key = (record["task"], int(record["doc_id"]))
    except (ValueError, KeyError, TypeError):
        return None
    if record.get("error") is not None or key in seen:
        return None
    return key, record


def tidy(directory: Path, run_id: str) -> dict[str, int]:
    """Drop the lines that do not count from the run's files (rank 0, before any rank of
    the resumed session appends). Returns what was dropped, for the log."""
    seen: set[SampleKey] = set()
    dropped = {"failed": 0, "partial": 0, "repeated": 0}
    for path in run_files(directory, run_id):
        with open(path, "rb") as f:
            lines = f.readlines()
        keep = []
        for line in lines:
            done = _done(line, seen)
            if done:
                seen.add(done[0])
                keep.append(line)
            elif not line.endswith(b"\n") or not _parses(line):
                dropped["partial"] += 1
            elif json.loads(line).get("error") is not None:
                dropped["failed"] += 1
            else:
                dropped["repeated"] += 1
        if len(keep) != len(lines):
            _replace(path, b"".join(keep))
    return dropped


def answered(directory: Path, run_id: str) -> dict[SampleKey, RecordedAnswer]:
    """Every sample the run has a good record of, from all its rank files."""
    seen: set[SampleKey] = set()
    out: dict[SampleKey, RecordedAnswer] = {}
    for path in run_files(directory, run_id):
        with open(path, "rb") as f:
            for line in f:
                done = _done(line, seen)
                if done:
                    seen.add(done[0])
                    out[done[0]] = RecordedAnswer.of(done[1])
    return out


def _parses(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _replace(path: Path, data: bytes) -> None:
    """Write-then-rename: a crash leaves the old file or the new one, never half of either."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ----- a session -----------------------------------------------------------------------------
def open_run(directory: Path, adapter: str, settings: dict, *, run_id: str | None, resume: bool,
             world_size: int) -> tuple[RunPlan, list[str], RunLock | None]:
    """Rank 0's start of a session: decide the run, lock it, tidy a resumed run's files and
    journal the start. Returns the plan (its ``error`` set when the run cannot start), what
    to log, and the lock to hold while the session runs."""
    plan = plan_run(directory, adapter, settings, run_id=run_id, resume=resume)
    if plan.error:
        return plan, [], None
    try:
        lock = RunLock.take(directory, plan.run_id)
    except RunLocked as err:
        return RunPlan(error=str(err)), [], None
    log = list(plan.notes)
    try:
        if plan.resumed:
            dropped = tidy(directory, plan.run_id)
            recorded = len(answered(directory, plan.run_id))
            log.append(f"resuming run {plan.run_id}: {recorded} samples already recorded are not run again "
                       f"(lmms-eval gets their recorded answers); dropped from its files: {dropped['failed']} "
                       f"failed record(s), run again now, {dropped['partial']} partial line(s)")
        append_event(directory, RunStarted(run_id=plan.run_id, session=plan.session, world_size=world_size,
                                           resumed=plan.resumed, settings=settings_fingerprint(settings),
                                           pid=os.getpid(), host=socket.gethostname()))
    except BaseException:
        lock.abandon()
        raise
    return plan, log, lock


@dataclass
class RunSession:
    """One process's part of a session: what the run already answered, and its record file."""
    directory: Path
    plan: RunPlan
    rank: int
    answered: dict[SampleKey, RecordedAnswer]
    records: RecordWriter
    lock: RunLock | None = None  # rank 0's

    @classmethod
    def join(cls, directory: Path, plan: RunPlan, rank: int, lock: RunLock | None = None) -> "RunSession":
        """Every rank, once rank 0 has opened the run (and holds ``lock``)."""
        done = answered(directory, plan.run_id) if plan.resumed else {}
        return cls(Path(directory), plan, rank, done, RecordWriter(directory, plan.run_id, rank), lock)

    @property
    def run_id(self) -> str:
        return self.plan.run_id

    @property
    def path(self) -> Path:
        return record_path(self.directory, self.run_id, self.rank)

    def write(self, record) -> RecordedAnswer:
        """Write a finished record (raises RecordWriteError when the disk fails) and remember it."""
        record = self.records.write(record)
        self.answered[record.task, int(record.doc_id)] = done = RecordedAnswer.of(record)
        return done

    def finish(self, requests: int, run_now: int, seconds: float | None = None) -> None:
        """Journal the end of this process's part, once its records are on disk."""
        self.records.sync()
        append_event(self.directory, RunFinished(run_id=self.run_id, session=self.plan.session, rank=self.rank,
                                                 requests=requests, run_now=run_now,
                                                 seconds=None if seconds is None else round(seconds, 6)))


@contextmanager
def joined(directory: Path, plan: RunPlan, rank: int, lock: RunLock | None = None) -> Iterator[RunSession]:
    """``RunSession.join`` for the block that readies the process (the adapter loads its model
    there). If joining or the block raises, the session is abandoned and the exception goes on
    unchanged: this rank's record file is removed if it holds nothing, and rank 0 (``lock``)
    takes its start line back out of the journal (removing a new run's journal) and releases
    the lock. A file holding a record is never touched, so a resumed run keeps its records."""
    session = None
    try:
        session = RunSession.join(directory, plan, rank, lock)
        yield session
    except BaseException:
        with suppress(OSError, RecordWriteError):  # best effort: the failure that stopped the start is reported
            if session is not None:
                session.records.close()
            path = record_path(directory, plan.run_id, rank)
            if path.stat().st_size == 0:
                path.unlink()
        if lock is not None:
            with suppress(OSError):
                lock.abandon()  # releases the lock, whatever else fails
        raise
