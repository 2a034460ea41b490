"""Finding the runs in the directories given to ``collab-eval report`` / ``check``.

The contract:

- A run is one lmms-eval ``*_results.json`` (under RUN_DIR, at any depth) together with the
  per-sample records its collab adapter wrote, or a set of records on their own.
- Records are the files ``<run_name>.rank<k>.jsonl``. They are looked for in the
  ``records_dir`` of the run's ``model_args`` (as lmms-eval stored it in results.json,
  resolved against RUN_DIR, then against the current directory) and anywhere inside RUN_DIR;
  a run whose records (by run_id) lie inside RUN_DIR takes those alone, so a run folder
  copied elsewhere reports its own records, never the original's.
- Records that carry a ``run_id`` are one run per id, whatever files they are in (the ranks
  of a data-parallel run, a resumed run's files or appended lines); a results.json whose
  model_args name a ``run_id`` is tied to exactly those records. Older records (no run_id)
  are one run per ``run_name``, and a results.json without a run_id takes, among the runs
  with its policy and tasks, a complete one (as many samples per task as results.json's
  ``n-samples``) before an incomplete one, then the one whose ``run_name`` time is nearest
  to the run's start.
- Records inside RUN_DIR that no results.json claims form runs of their own.
- What a crash can leave (an empty records file, a cut-off last line) is skipped with a
  warning naming the file and line; anything else malformed is a ValueError naming the file.
"""
from __future__ import annotations

import json
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from lmms_eval.utils import simple_parse_args_string

from collab_eval.records import RecordFile, SampleRecord, read_record_file

RECORD_FILE = re.compile(r"^(?P<run>.+)\.rank(?P<rank>\d+)\.jsonl$")
RUN_TIME = re.compile(r"(\d{8}T\d{6})(?:\.\d+Z-[0-9a-f]+)?$")  # <adapter>-<UTC time>[.µsZ-<random>]
# The policy arguments that change what each policy does (score: the aggregation the gate used).
POLICY_PARAMETERS = {"threshold": ("threshold",), "random": ("rate", "seed"), "always": (), "never": (), "tiles": ()}


def warn_on_stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


@dataclass
class Run:
    name: str  # the records' run_id, or their run_name for records written before run ids
    records: list[SampleRecord]  # a record without its own rank takes its file's (the process that wrote it)
    record_files: list[Path]
    results_file: Path | None = None
    results: dict = field(default_factory=dict)  # lmms-eval's results.json, when there is one
    run_id: str | None = None
    skipped: list[str] = field(default_factory=list)  # what of its records files was left out (a cut line)

    @property
    def config(self) -> dict:
        return config_of(self.results)

    @property
    def model_args(self) -> dict:
        return parse_model_args(self.config.get("model_args", ""))

    @property
    def adapter(self) -> str:
        """The lmms-eval model name (``--model``), when known."""
        return self.config.get("model", "") or "collab"

    @property
    def policy(self) -> str:
        policies = {r.policy for r in self.records}
        return policies.pop() if len(policies) == 1 else "mixed"

    @property
    def tasks(self) -> list[str]:
        return sorted({r.task for r in self.records})

    @property
    def policy_args(self) -> dict:
        """The score aggregation and the policy's own parameters (τ; rate and seed) as the run used
        them: from the records' ``policy_args`` (defaults included), else from results.json's
        model_args (records written before policy_args existed)."""
        if not self.records:
            return {}
        first = self.records[0]
        out = {"score": first.score_name}
        recorded = first.policy_args
        if recorded:
            keys = POLICY_PARAMETERS.get(self.policy, tuple(recorded))
            return out | {key: recorded[key] for key in keys if key in recorded}
        args = self.model_args
        for key, cast in (("threshold", float), ("rate", float), ("seed", int)):
            if key in args:
                out[key] = cast(args[key])
        return out

    def task_results(self, task: str) -> dict:
        """lmms-eval's aggregated results for one task ({} without a results.json)."""
        entry = (self.results.get("results") or {}).get(task)
        return entry if isinstance(entry, dict) else {}

    @property
    def counts(self) -> Counter:
        return Counter(r.task for r in self.records)

    @property
    def complete(self) -> bool:
        """A results.json says the run finished, with as many samples per task as were recorded."""
        return self.results_file is not None and expected_counts(self.results) in ({}, dict(self.counts))


def parse_model_args(text) -> dict:
    """lmms-eval's ``k=v,k=v`` model_args string, parsed by lmms-eval's own parser (as the run
    itself was: JSON values with commas and typed values included)."""
    if isinstance(text, dict):
        return text
    return simple_parse_args_string(text) if isinstance(text, str) else {}


def config_of(results: dict) -> dict:
    return results.get("config") or {}


def results_run_id(results: dict, results_file: Path) -> str | None:
    """The run id that ties results.json to its records: the ``run_id`` model arg when the
    user gave one, else the one the adapter put in every logged sample's token_counts
    (``--log_samples`` writes ``<date>_samples_<task>.jsonl`` beside ``<date>_results.json``)."""
    run_id = parse_model_args(config_of(results).get("model_args", "")).get("run_id")
    if run_id not in (None, ""):
        return str(run_id)
    prefix = results_file.name.removesuffix("results.json")
    for samples in sorted(results_file.parent.glob(f"{prefix}samples_*.jsonl")):
        with open(samples, encoding="utf-8") as f:
            try:
                counts = json.loads(f.readline()).get("token_counts") or [{}]
            except (ValueError, AttributeError):
                continue  # unreadable log: fall back to matching by policy, tasks and time
        run_id = (counts[0].get("run_id") if isinstance(counts, list) and counts and isinstance(counts[0], dict)
                  else None)
        if run_id:
            return str(run_id)
    return None


def expected_counts(results: dict) -> dict[str, int]:
    """Samples per task lmms-eval evaluated (its ``n-samples``' effective count)."""
    counts = {}
    for task, n in (results.get("n-samples") or {}).items():
        effective = n.get("effective") if isinstance(n, dict) else None
        if isinstance(effective, int) and task in (results.get("results") or {}):
            counts[task] = effective
    return counts


def read_json(path: Path, expected: str):
    """A JSON file's content; a ValueError naming the file and ``expected`` when it cannot be read."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise ValueError(f"{path}: cannot read it ({err.strerror or err})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file (expected {expected})") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from None


def read_results(path: Path) -> dict:
    """An lmms-eval results.json; a ValueError naming the file when it is not one."""
    results = read_json(path, "lmms-eval's results.json")
    if not isinstance(results, dict):
        raise ValueError(f"{path}: expected lmms-eval's results (a JSON object), got a {type(results).__name__}")
    for key in ("config", "results", "n-samples"):
        if results.get(key) is not None and not isinstance(results[key], dict):
            raise ValueError(f"{path}: '{key}' should be an object, got a {type(results[key]).__name__}")
    model_args = config_of(results).get("model_args", "")
    if not isinstance(model_args, (str, dict)):
        raise ValueError(f"{path}: config.model_args should be a string, got a {type(model_args).__name__}")
    return results


class RecordReader:
    """Reads each records file once, passing what it skips to ``warn`` once."""

    def __init__(self, warn: Callable[[str], None]):
        self.files: dict[Path, RecordFile] = {}
        self.warned: set[str] = set()
        self.say = warn

    def warn(self, message: str) -> None:
        if message not in self.warned:
            self.warned.add(message)
            self.say(message)

    def read(self, path: Path) -> RecordFile:
        if path not in self.files:
            self.files[path] = read_record_file(path)
            for message in self.files[path].skipped:
                self.warn(message)
        return self.files[path]

    def runs(self, paths) -> dict[tuple, Run]:
        """The runs these files hold: one per run_id, or per run_name for records without one."""
        runs: dict[tuple, Run] = {}
        for path in sorted({Path(p).resolve() for p in paths}):
            match = RECORD_FILE.match(path.name)
            if not match:
                continue
            for record in self.read(path).records:
                if "rank" not in record.model_fields_set:  # written before records held their rank
                    record.rank = int(match["rank"])
                key = ("id", record.run_id) if record.run_id else ("name", match["run"])
                run = runs.setdefault(key, Run(key[1], [], [], run_id=key[1] if key[0] == "id" else None))
                run.records.append(record)
                if path not in run.record_files:
                    run.record_files.append(path)
                    run.skipped += self.files[path].skipped
        for run in runs.values():
            run.records = once_per_sample(run, self.warn)
        return runs


def once_per_sample(run: Run, warn: Callable[[str], None]) -> list[SampleRecord]:
    """A sample recorded twice in one run (a resumed run that redid it) counts once: the first."""
    seen, kept = set(), []
    for record in run.records:
        key = (record.task, record.doc_id)
        if key not in seen:
            seen.add(key)
            kept.append(record)
    if len(kept) < len(run.records):
        warn(f"run {run.name}: {len(run.records) - len(kept)} sample(s) recorded more than once, each counted once")
    return kept


def find_runs(run_dir, warn: Callable[[str], None] = warn_on_stderr) -> list[Run]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} is not a directory")
    reader = RecordReader(warn)
    local = list(run_dir.rglob("*.rank*.jsonl"))
    runs, claimed = [], set()
    for results_file in sorted(run_dir.rglob("*_results.json")):
        results = read_results(results_file)
        run_id = results_run_id(results, results_file)
        candidates = reader.runs(local)
        if run_id is None or ("id", run_id) not in candidates:  # its records are not inside RUN_DIR: records_dir
            candidates = reader.runs(local + records_dir_files(results, run_dir))
        key = pick_run(candidates, results, results_file)
        claimed.add(key)
        run = candidates[key]
        run.results_file, run.results = results_file, results
        runs.append(run)
    for key, run in reader.runs(local).items():
        if key not in claimed:
            runs.append(run)
    if not runs:
        found = f" ({len(reader.files)} records file(s) without a record)" if reader.files else ""
        raise FileNotFoundError(f"no lmms-eval results.json or collab records (*.rank<k>.jsonl) under {run_dir}{found}")
    return runs


def records_dir_files(results: dict, run_dir: Path) -> list[Path]:
    """The records files in the run's ``records_dir``: a relative one is resolved from the run's
    own folder (RUN_DIR) first, then from the current directory, so a run folder copied
    elsewhere reports its own records (and its records inside RUN_DIR come first anyway)."""
    records_dir = parse_model_args(config_of(results).get("model_args", "")).get("records_dir")
    if not records_dir:
        return []
    for base in (run_dir, Path.cwd()):
        directory = base / str(records_dir)
        if directory.is_dir():
            return list(directory.glob("*.rank*.jsonl"))
    return []


def pick_run(candidates: dict[tuple, Run], results: dict, results_file: Path) -> tuple:
    """The key of the run whose records belong to this results.json."""
    run_id = results_run_id(results, results_file)
    if run_id is not None:
        if ("id", run_id) not in candidates:
            raise FileNotFoundError(f"{results_file}: no records of its run_id {run_id} (looked in the records_dir of "
                                    "its model_args and inside the run directory)")
        return ("id", run_id)
    if not candidates:
        raise FileNotFoundError(f"{results_file}: no collab records found (looked in the records_dir of its "
                                "model_args and inside the run directory)")
    if len(candidates) == 1:
        return next(iter(candidates))
    policy = parse_model_args(config_of(results).get("model_args", "")).get("policy", "threshold")
    tasks = set(results.get("results") or {})
    expected = expected_counts(results)
    fitting = [key for key, run in candidates.items() if run.policy == policy and set(run.tasks) <= tasks]
    start = results_time(results)
    never = datetime.max.replace(tzinfo=timezone.utc)

    def rank(key):
        run = candidates[key]
        distance = abs((started(run) or never) - start) if start else 0
        return (expected not in ({}, dict(run.counts)), distance)

    ranked = sorted(fitting, key=rank)
    if not ranked or (start is None and len(ranked) > 1 and rank(ranked[0]) == rank(ranked[1])):
        names = sorted(run.name for run in candidates.values())
        raise ValueError(f"{results_file}: cannot tell which records are this run's among {names}; "
                         "give each run its own records_dir")
    return ranked[0]


def started(run: Run) -> datetime | None:
    """The earliest start among the run's record files (the adapter names them
    ``<model>-<UTC %Y%m%dT%H%M%S>``)."""
    times = [run_time(RECORD_FILE.match(p.name)["run"]) for p in run.record_files]
    times = [t for t in times if t]
    return min(times) if times else None


def run_time(name: str) -> datetime | None:
    match = RUN_TIME.search(name)
    return datetime.strptime(match[1], "%Y%m%dT%H%M%S").replace(tzinfo=timezone.utc) if match else None


def results_time(results: dict) -> datetime | None:
    """lmms-eval's ``date`` is local time in the CLI's ``--timezone``."""
    from zoneinfo import ZoneInfo
    try:
        tz = (config_of(results).get("resolved_cli_args") or {}).get("timezone") or "Asia/Singapore"
        return datetime.strptime(results["date"], "%Y%m%d_%H%M%S").replace(tzinfo=ZoneInfo(tz))
    except (KeyError, ValueError, TypeError):
        return None
