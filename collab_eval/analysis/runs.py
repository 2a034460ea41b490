"""Finding the runs in the directories given to ``collab-eval report`` / ``check``.

The contract:

- A run is one lmms-eval ``*_results.json`` (under RUN_DIR, at any depth) together with the
  per-sample records its collab adapter wrote, or a set of records on their own.
- Records are the files ``<run_name>.rank<k>.jsonl``. They are looked for in the
  ``records_dir`` of the run's ``model_args`` (as lmms-eval stored it in results.json,
  resolved against the current directory, then against RUN_DIR) and anywhere inside RUN_DIR.
- When those places hold the records of several runs (one ``run_name`` each), the run's
  records are the ones with its policy and tasks whose ``run_name`` time is nearest to the
  run's start. Giving every run its own ``records_dir`` (e.g. ``OUT/records`` inside
  lmms-eval's ``--output_path OUT``) avoids any guessing.
- Records inside RUN_DIR that no results.json claims form runs of their own.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from lmms_eval.utils import simple_parse_args_string

from collab_eval.records import read_records

RECORD_FILE = re.compile(r"^(?P<run>.+)\.rank(?P<rank>\d+)\.jsonl$")
RUN_TIME = re.compile(r"(\d{8}T\d{6})$")


@dataclass
class Run:
    name: str  # the records' run_name
    records: list[dict]  # with "_rank" added: which process wrote the record
    record_files: list[Path]
    results_file: Path | None = None
    results: dict = field(default_factory=dict)  # lmms-eval's results.json, when there is one

    @property
    def model_args(self) -> dict:
        return parse_model_args(self.results.get("config", {}).get("model_args", ""))

    @property
    def adapter(self) -> str:
        """The lmms-eval model name (``--model``), when known."""
        return self.results.get("config", {}).get("model", "") or "collab"

    @property
    def policy(self) -> str:
        policies = {r.get("policy") for r in self.records}
        return policies.pop() if len(policies) == 1 else "mixed"

    @property
    def tasks(self) -> list[str]:
        return sorted({r["task"] for r in self.records})

    @property
    def policy_args(self) -> dict:
        """Threshold, rate, seed and score as the run was started (from model_args)."""
        args = self.model_args
        out = {"score": self.records[0].get("score_name", "max")} if self.records else {}
        for key, cast in (("threshold", float), ("rate", float), ("seed", int)):
            if key in args:
                out[key] = cast(args[key])
        return out


def parse_model_args(text: str) -> dict:
    """lmms-eval's ``k=v,k=v`` model_args string, parsed by lmms-eval's own parser (as the run
    itself was: JSON values with commas and typed values included)."""
    return simple_parse_args_string(text)


def record_groups(paths) -> dict[str, list[Path]]:
    groups: dict[str, list[Path]] = {}
    for path in sorted({Path(p).resolve() for p in paths}):
        match = RECORD_FILE.match(path.name)
        if match:
            groups.setdefault(match["run"], []).append(path)
    return groups


def load_run(name: str, files: list[Path], results_file: Path | None = None) -> Run:
    records = []
    for path in files:
        rank = int(RECORD_FILE.match(path.name)["rank"])
        records.extend({**r, "_rank": rank} for r in read_records([path]))
    results = json.loads(results_file.read_text()) if results_file else {}
    return Run(name, records, files, results_file, results)


def find_runs(run_dir) -> list[Run]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} is not a directory")
    local = list(run_dir.rglob("*.rank*.jsonl"))
    runs, claimed = [], set()
    for results_file in sorted(run_dir.rglob("*_results.json")):
        results = json.loads(results_file.read_text())
        candidates = record_groups(local + records_dir_files(results, run_dir))
        name = pick_group(candidates, results, results_file)
        claimed.add(name)
        runs.append(load_run(name, candidates[name], results_file))
    for name, files in record_groups(local).items():
        if name not in claimed:
            runs.append(load_run(name, files))
    if not runs:
        raise FileNotFoundError(f"no lmms-eval results.json or collab records (*.rank<k>.jsonl) under {run_dir}")
    return runs


def records_dir_files(results: dict, run_dir: Path) -> list[Path]:
    records_dir = parse_model_args(results.get("config", {}).get("model_args", "")).get("records_dir")
    if not records_dir:
        return []
    for base in (Path.cwd(), run_dir):
        directory = base / str(records_dir)
        if directory.is_dir():
            return list(directory.glob("*.rank*.jsonl"))
    return []


def pick_group(groups: dict[str, list[Path]], results: dict, results_file: Path) -> str:
    """The run_name whose records belong to this results.json."""
    if not groups:
        raise FileNotFoundError(f"{results_file}: no collab records found (looked in the records_dir of its "
                                "model_args and inside the run directory)")
    if len(groups) == 1:
        return next(iter(groups))
    policy = parse_model_args(results.get("config", {}).get("model_args", "")).get("policy", "threshold")
    tasks = set(results.get("results", {}))
    fitting = {}
    for name, files in groups.items():
        first = read_first(files)
        if first and first.get("policy") == policy and first.get("task") in tasks:
            fitting[name] = files
    start = results_time(results)
    ranked = sorted(fitting, key=lambda name: abs((run_time(name) or datetime.max.replace(tzinfo=timezone.utc)) - start)
                    if start else 0)
    if not ranked or (start is None and len(ranked) > 1):
        raise ValueError(f"{results_file}: cannot tell which records are this run's among {sorted(groups)}; "
                         "give each run its own records_dir")
    return ranked[0]


def read_first(files: list[Path]) -> dict | None:
    for path in files:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    return json.loads(line)
    return None


def run_time(name: str) -> datetime | None:
    """The adapter names its records ``<model>-<UTC %Y%m%dT%H%M%S>``."""
    match = RUN_TIME.search(name)
    return datetime.strptime(match[1], "%Y%m%dT%H%M%S").replace(tzinfo=timezone.utc) if match else None


def results_time(results: dict) -> datetime | None:
    """lmms-eval's ``date`` is local time in the CLI's ``--timezone``."""
    from zoneinfo import ZoneInfo
    try:
        tz = results.get("config", {}).get("resolved_cli_args", {}).get("timezone") or "Asia/Singapore"
        return datetime.strptime(results["date"], "%Y%m%d_%H%M%S").replace(tzinfo=ZoneInfo(tz))
    except (KeyError, ValueError, TypeError):
        return None
