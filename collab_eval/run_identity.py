"""Which run a process belongs to: its id, its settings, and the run journal on disk.

A run is one evaluation, however many processes (ranks) and however many times it was
resumed. Its id cannot collide: UTC time to the microsecond plus a random suffix, made on
rank 0 and shared with every rank. In ``records_dir`` a run is:

- ``<run_id>.rank<k>.jsonl``: the records each rank wrote (every session appends);
- ``<run_id>.run.ndjson``: its journal, one JSON line per event, appended: ``start`` (rank 0,
  at every session: settings, world size) and ``finish`` (each rank, when lmms-eval's
  requests are all answered). A run is finished when every rank of its last session finished.

The settings decide what may be resumed: a run continues only a run started with the same
settings (adapter, checkpoint, policy and its arguments, codec, score, layer, token limit,
dtype, family args).
"""
from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from collab_eval.records import json_number

JOURNAL_SUFFIX = ".run.ndjson"  # JSON lines, named so that globs for record files (*.jsonl) skip it


def new_run_id(adapter: str) -> str:
    """``<adapter>-<UTC yyyymmddThhmmss.ffffff>Z-<8 hex>``: sortable by start, unique even for
    runs started in the same microsecond."""
    return f"{adapter}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S.%f}Z-{secrets.token_hex(4)}"


def settings_fingerprint(settings: dict) -> dict:
    """The settings as the journal stores them (JSON: infinities as "inf"/"-inf")."""
    return json.loads(json.dumps({k: json_number(v) for k, v in settings.items()}, sort_keys=True))


def journal_path(directory: Path, run_id: str) -> Path:
    return Path(directory) / f"{run_id}{JOURNAL_SUFFIX}"


def append_event(directory: Path, run_id: str, event: dict) -> None:
    """One line, appended in one write (several ranks append to the same journal)."""
    line = (json.dumps({"run_id": run_id, **event}, sort_keys=True) + "\n").encode()
    fd = os.open(journal_path(directory, run_id), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class RunOnDisk:
    run_id: str
    settings: dict
    started: str  # UTC start of its last session
    world_size: int
    finished_ranks: set[int] = field(default_factory=set)

    @property
    def finished(self) -> bool:
        return self.finished_ranks >= set(range(self.world_size))

    def recorded_samples(self, directory: Path) -> int:
        n = 0
        for path in Path(directory).glob(f"{self.run_id}.rank*.jsonl"):
            with open(path, "rb") as f:
                n += sum(1 for line in f if line.endswith(b"\n"))
        return n


def runs_on_disk(directory: Path) -> dict[str, RunOnDisk]:
    """Every run with a journal in ``directory`` (unreadable lines skipped)."""
    runs: dict[str, RunOnDisk] = {}
    for path in sorted(Path(directory).glob(f"*{JOURNAL_SUFFIX}")):
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    event = json.loads(line)
                    run_id, kind = event["run_id"], event["event"]
                except (ValueError, KeyError, TypeError):
                    continue
                if kind == "start":
                    runs[run_id] = RunOnDisk(run_id, event.get("settings", {}), event.get("session", ""),
                                             int(event.get("world_size", 1)))
                elif kind == "finish" and run_id in runs and event.get("session") == runs[run_id].started:
                    runs[run_id].finished_ranks.add(int(event.get("rank", 0)))
    return runs


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
        has_records = any(Path(directory).glob(f"{run_id}.rank*.jsonl"))
        if run_id not in runs and not has_records:
            note = f"resume=true: records_dir holds no run {run_id} yet, so it starts now" if resume else None
            return RunPlan(run_id, session, False, (note,) if note else ())
        if not resume:
            return RunPlan(error=f"run_id={run_id}: records_dir={directory} already holds that run; add resume=true "
                                 "to continue it, or choose another run_id")
        if run_id not in runs:
            return RunPlan(error=f"run_id={run_id}: its journal {journal_path(directory, run_id).name} is missing, so "
                                 "its settings are unknown and it cannot be resumed")
        differ = differences(runs[run_id].settings, fingerprint)
        if differ:
            return RunPlan(error=f"run_id={run_id} was started with other settings ({differ}); resume it with the "
                                 "same model args, or choose another run_id")
        return RunPlan(run_id, session, True)
    same = sorted((r for r in runs.values() if r.settings == fingerprint), key=lambda r: r.started)
    if resume and same:
        return RunPlan(same[-1].run_id, session, True)
    new_id = new_run_id(adapter)
    notes = []
    if resume:
        notes.append(f"resume=true: records_dir={directory} holds no run with these settings, so run {new_id} starts")
    unfinished = [r for r in same if not r.finished]
    if not resume and unfinished:
        last = unfinished[-1]
        notes.append(f"records_dir={directory} holds the unfinished run {last.run_id} with these settings "
                     f"({last.recorded_samples(directory)} samples recorded). This starts a new run {new_id}; to "
                     f"continue {last.run_id} instead, add resume=true to --model_args (or run_id={last.run_id},resume=true).")
    return RunPlan(new_id, session, False, tuple(notes))


def differences(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new))
    return ", ".join(f"{k}: {old.get(k)!r} then, {new.get(k)!r} now" for k in keys if old.get(k) != new.get(k))
