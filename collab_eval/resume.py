"""Continuing a run: what its record files already hold.

A sample counts as done when some rank file of the run holds a complete record of it
without an error. Before a resumed session appends, rank 0 rewrites (atomically) any file
of the run holding lines that do not count: a partial last line (the process died or the
disk filled mid-write), records of failed samples (they are run again, and their new
record replaces the old), repeats. So a run never holds a sample twice, whatever the
number of ranks before and now.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

SampleKey = tuple[str, int]  # (task, doc_id): lmms-eval evaluates one split per task


@dataclass
class Answered:
    """What lmms-eval gets back for a sample already answered in this run."""
    answer: str
    output_tokens: int
    bytes_total: int
    flops_total: int
    retransmitted: bool

    @classmethod
    def of(cls, record) -> "Answered":
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


def answered(directory: Path, run_id: str) -> dict[SampleKey, Answered]:
    """Every sample the run has a good record of, from all its rank files."""
    seen: set[SampleKey] = set()
    out: dict[SampleKey, Answered] = {}
    for path in run_files(directory, run_id):
        with open(path, "rb") as f:
            for line in f:
                done = _done(line, seen)
                if done:
                    seen.add(done[0])
                    out[done[0]] = Answered.of(done[1])
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
