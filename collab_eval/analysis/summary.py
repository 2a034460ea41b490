"""From runs to the machine-readable summary: scoring, curves, tables' numbers.

A *system* is a checkpoint with a codec (``tiny-llava:png``): what a figure compares. Each
``always`` run of a system yields its curves per task; every other run (threshold, random,
never, or any policy added later) is one operating point per task on its system's figure.

The summary is a tree of dataclasses (:class:`Summary` down to :class:`curves.Point`); it
becomes JSON only at the boundary (``Summary.to_json``, written as summary.json) and is read
back into the same types by ``Summary.from_json``, which names the place of anything malformed.
"""
from __future__ import annotations

import functools
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median

import numpy as np

from collab_eval.analysis import curves
from collab_eval.analysis.curves import Point, Samples
from collab_eval.analysis.runs import Run, read_json
from collab_eval.analysis.scoring import Scorer
from collab_eval.records import STAGE1_PARTS
from collab_eval.uncertainty import AGGREGATES

SCHEMA = "collab-eval/summary/1"
CORRECT = 0.5  # a stage-1 answer with per-sample accuracy >= this counts as right (AUROC, histograms)
TARGET = 0.99  # fraction of always-retransmit accuracy the cheapest operating point must reach
IMAGE_KEYS = ("image_id", "image_source", "image_path", "image_file")  # doc fields naming the image


class SummaryError(ValueError):
    """A summary.json that is not one: says where and what was expected."""


# ----- the summary's types (JSON field order is the dataclasses' field order) -----------
@dataclass(frozen=True)
class Settings:
    correct_at: float
    target_fraction: float
    random_seeds: int
    random_rates: list[float]

    def to_json(self) -> dict:
        return {"correct_at": self.correct_at, "target_fraction": self.target_fraction,
                "random_seeds": self.random_seeds, "random_rates": list(self.random_rates)}

    @classmethod
    def from_json(cls, d, where: str) -> "Settings":
        d = obj(d, where)
        return cls(number(d, "correct_at", where), number(d, "target_fraction", where),
                   int(number(d, "random_seeds", where)), [number(r, None, f"{where}.random_rates")
                                                           for r in array(d.get("random_rates", []), where)])


@dataclass(frozen=True)
class BandStep:
    """Spread of accuracy over seeded random draws at one rate, at the rate's expected cost."""
    rate: float
    bytes: float
    flops: float
    lo: float
    hi: float
    seeds: int

    def to_json(self) -> dict:
        return {"rate": self.rate, "bytes": self.bytes, "flops": self.flops, "lo": self.lo, "hi": self.hi,
                "seeds": self.seeds}

    @classmethod
    def from_json(cls, d, where: str) -> "BandStep":
        d = obj(d, where)
        return cls(*(number(d, k, where) for k in ("rate", "bytes", "flops", "lo", "hi")), int(number(d, "seeds", where)))


@dataclass(frozen=True)
class Saving:
    """An operating point with what it saves against the original image and against always."""
    point: Point
    vs_original: float | None
    vs_always: float | None
    flops_vs_always: float | None

    def to_json(self) -> dict:
        return {**self.point.to_dict(), "saving_vs_original": self.vs_original, "saving_vs_always": self.vs_always,
                "flops_saving_vs_always": self.flops_vs_always}

    @classmethod
    def from_json(cls, d, where: str) -> "Saving | None":
        if d is None:
            return None
        d = obj(d, where)
        return cls(point_of(d, where), *(number(d, k, where, optional=True)
                                         for k in ("saving_vs_original", "saving_vs_always", "flops_saving_vs_always")))


@dataclass
class Curves:
    gated: list[Point]  # the entropy gate at every threshold, cost ascending
    gated_other_scores: dict[str, list[Point]]  # the gate on the other score aggregations
    random: list[Point]  # random retransmission's expectation at each rate
    random_band: list[BandStep]
    oracle: list[Point]

    def to_json(self) -> dict:
        return {"gated": dicts(self.gated),
                "gated_other_scores": {agg: dicts(c) for agg, c in self.gated_other_scores.items()},
                "random": dicts(self.random), "random_band": [b.to_json() for b in self.random_band],
                "oracle": dicts(self.oracle)}

    @classmethod
    def from_json(cls, d, where: str) -> "Curves":
        d = obj(d, where)
        others = obj(d.get("gated_other_scores", {}), f"{where}.gated_other_scores")
        return cls(points_at(d, "gated", where),
                   {agg: points_at(others, agg, f"{where}.gated_other_scores") for agg in others},
                   points_at(d, "random", where, optional=True),
                   [BandStep.from_json(b, f"{where}.random_band[{i}]")
                    for i, b in enumerate(array(d.get("random_band", []), f"{where}.random_band"))],
                   points_at(d, "oracle", where, optional=True))


@dataclass
class FromAlways:
    """What one ``always`` run gives for one task: its ends, the oracle and every curve."""
    n: int
    errors: int
    score_name: str
    stage1_correct: int
    bytes_original: float
    lmms_eval_accuracy: float | None
    never: Point
    always: Point
    oracle: Point
    auroc: dict[str, float | None]
    target_accuracy: float
    reach_target: dict[str, Saving | None]  # gated / random / oracle: the cheapest point reaching the target
    savings_never: Saving | None
    curves: Curves

    def to_json(self) -> dict:
        return {"n": self.n, "errors": self.errors, "score_name": self.score_name,
                "stage1_correct": self.stage1_correct, "bytes_original": self.bytes_original,
                "lmms_eval_accuracy": self.lmms_eval_accuracy, "never": self.never.to_dict(),
                "always": self.always.to_dict(), "oracle": self.oracle.to_dict(), "auroc": dict(self.auroc),
                "target_accuracy": self.target_accuracy,
                "reach_target": {name: s and s.to_json() for name, s in self.reach_target.items()},
                "savings_never": self.savings_never and self.savings_never.to_json(), "curves": self.curves.to_json()}

    @classmethod
    def from_json(cls, d: dict, where: str) -> "FromAlways":
        auroc = obj(d.get("auroc", {}), f"{where}.auroc")
        reach = obj(d.get("reach_target", {}), f"{where}.reach_target")
        return cls(int(number(d, "n", where)), int(number(d, "errors", where, default=0)),
                   str(d.get("score_name", "max")), int(number(d, "stage1_correct", where, default=0)),
                   number(d, "bytes_original", where, default=0.0),
                   number(d, "lmms_eval_accuracy", where, optional=True),
                   point_of(d.get("never"), f"{where}.never"), point_of(d.get("always"), f"{where}.always"),
                   point_of(d.get("oracle"), f"{where}.oracle"),
                   {agg: number(auroc, agg, f"{where}.auroc", optional=True) for agg in auroc},
                   number(d, "target_accuracy", where, default=0.0),
                   {name: Saving.from_json(s, f"{where}.reach_target.{name}") for name, s in reach.items()},
                   Saving.from_json(d.get("savings_never"), f"{where}.savings_never"),
                   Curves.from_json(d.get("curves"), f"{where}.curves"))


@dataclass
class RunPoint:
    """A run of any policy but always: its own outcome on one task, rescored like the curves."""
    label: str
    run: str
    policy: str
    policy_args: dict
    n: int
    errors: int
    point: Point
    derived_from_always: Point | None = None  # what the system's always run predicts for the same policy

    def to_json(self) -> dict:
        d = {"label": self.label, "run": self.run, "policy": self.policy, "policy_args": dict(self.policy_args),
             "n": self.n, "errors": self.errors, **self.point.to_dict()}
        if self.derived_from_always:
            d["derived_from_always"] = self.derived_from_always.to_dict()
        return d

    @classmethod
    def from_json(cls, d, where: str) -> "RunPoint":
        d = obj(d, where)
        derived = d.get("derived_from_always")
        return cls(str(d.get("label", "")), str(d.get("run", "")), text(d, "policy", where),
                   obj(d.get("policy_args", {}), f"{where}.policy_args"), int(number(d, "n", where)),
                   int(number(d, "errors", where, default=0)), point_of(d, where),
                   None if derived is None else point_of(derived, f"{where}.derived_from_always"))


@dataclass
class TaskSummary:
    metric: str
    from_always: FromAlways | None = None  # None when the system has no always run of this task
    points: list[RunPoint] = field(default_factory=list)
    calibrated: dict | None = None  # collab-eval report --calibrate: calibrate.CalibrationResult's JSON form

    def to_json(self) -> dict:
        return {"metric": self.metric, **(self.from_always.to_json() if self.from_always else {}),
                "points": [p.to_json() for p in self.points],
                **({"calibrated": self.calibrated} if self.calibrated else {})}

    @classmethod
    def from_json(cls, d, where: str) -> "TaskSummary":
        d = obj(d, where)
        has_curves = any(key in d for key in ("curves", "never", "always", "n"))
        return cls(text(d, "metric", where), FromAlways.from_json(d, where) if has_curves else None,
                   [RunPoint.from_json(p, f"{where}.points[{i}]")
                    for i, p in enumerate(array(d.get("points", []), f"{where}.points"))],
                   obj(d["calibrated"], f"{where}.calibrated") if "calibrated" in d else None)


@dataclass
class SystemSummary:
    checkpoint: str
    codec: str
    adapter: str
    always_runs: list[str] = field(default_factory=list)
    tasks: dict[str, TaskSummary] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"checkpoint": self.checkpoint, "codec": self.codec, "adapter": self.adapter,
                "always_runs": list(self.always_runs), "tasks": {t: e.to_json() for t, e in self.tasks.items()}}

    @classmethod
    def from_json(cls, d, where: str) -> "SystemSummary":
        d = obj(d, where)
        tasks = obj(d.get("tasks"), f"{where}.tasks")
        return cls(str(d.get("checkpoint", "")), str(d.get("codec", "")), str(d.get("adapter", "")),
                   [str(r) for r in array(d.get("always_runs", []), f"{where}.always_runs")],
                   {t: TaskSummary.from_json(e, f"{where}.tasks[{t!r}]") for t, e in tasks.items()})


@dataclass
class RunRow:
    """What was read: one run."""
    name: str
    system: str
    adapter: str
    policy: str
    label: str
    policy_args: dict
    tasks: list[str]
    samples: int
    errors: int
    results_file: str | None
    record_files: list[str]

    def to_json(self) -> dict:
        return {"name": self.name, "system": self.system, "adapter": self.adapter, "policy": self.policy,
                "label": self.label, "policy_args": dict(self.policy_args), "tasks": list(self.tasks),
                "samples": self.samples, "errors": self.errors, "results_file": self.results_file,
                "record_files": list(self.record_files)}

    @classmethod
    def from_json(cls, d, where: str) -> "RunRow":
        d = obj(d, where)
        return cls(text(d, "name", where), str(d.get("system", "")), str(d.get("adapter", "")),
                   str(d.get("policy", "")), str(d.get("label", "")),
                   obj(d.get("policy_args", {}), f"{where}.policy_args"),
                   [str(t) for t in array(d.get("tasks", []), f"{where}.tasks")],
                   int(number(d, "samples", where, default=0)), int(number(d, "errors", where, default=0)),
                   d.get("results_file"), [str(p) for p in array(d.get("record_files", []), f"{where}.record_files")])


@dataclass
class Summary:
    settings: Settings
    runs: list[RunRow]
    systems: dict[str, SystemSummary]
    views: list["TaskView"] = field(default_factory=list)  # per-sample data for the report; not in summary.json
    schema: str = SCHEMA

    def to_json(self) -> dict:
        return {"schema": self.schema, "settings": self.settings.to_json(), "runs": [r.to_json() for r in self.runs],
                "systems": {name: s.to_json() for name, s in self.systems.items()}}

    @classmethod
    def from_json(cls, d) -> "Summary":
        """Raises SummaryError saying where the JSON is not a summary (e.g. ``systems['x'].tasks``)."""
        d = obj(d, "the top level")
        if "systems" not in d:
            raise SummaryError("the top level has no 'systems': not a summary.json written by collab-eval report")
        systems = obj(d["systems"], "systems")
        settings = d.get("settings")
        return cls(Settings.from_json(settings, "settings") if settings is not None else
                   Settings(CORRECT, TARGET, 0, list(curves.RATES)),
                   [RunRow.from_json(r, f"runs[{i}]") for i, r in enumerate(array(d.get("runs", []), "runs"))],
                   {name: SystemSummary.from_json(s, f"systems[{name!r}]") for name, s in systems.items()},
                   schema=str(d.get("schema", SCHEMA)))

    @classmethod
    def read(cls, path) -> "Summary":
        """A summary.json from disk; any problem is a ValueError naming the file and the place."""
        path = Path(path)
        try:
            data = read_json(path, "a summary.json")
        except ValueError as err:
            raise SummaryError(str(err)) from None
        try:
            return cls.from_json(data)
        except SummaryError as err:
            raise SummaryError(f"{path}: {err}") from None

    def write(self, path) -> None:
        Path(path).write_text(json_text(self.to_json()) + "\n", encoding="utf-8")


# ----- reading JSON back: each helper names where a value is not what it should be ----------
def kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def obj(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise SummaryError(f"{where}: expected an object, got {kind(value)}")
    return value


def array(value, where: str) -> list:
    if not isinstance(value, list):
        raise SummaryError(f"{where}: expected a list, got {kind(value)}")
    return value


MISSING = object()


def number(d, key: str | None, where: str, optional: bool = False, default=MISSING) -> float | None:
    """``d[key]`` as a number (``d`` itself when key is None); null allowed when optional."""
    value = d if key is None else d.get(key, None if optional else default)
    if value is MISSING:
        raise SummaryError(f"{where}: '{key}' is missing")
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SummaryError(f"{where}{'' if key is None else '.' + key}: expected a number, got {kind(value)}")
    return value


def text(d: dict, key: str, where: str) -> str:
    if not isinstance(d.get(key), str):
        raise SummaryError(f"{where}: '{key}' is missing" if key not in d else
                           f"{where}.{key}: expected a string, got {kind(d[key])}")
    return d[key]


def point_of(d, where: str) -> Point:
    d = obj(d, where)
    for key in ("accuracy", "bytes", "flops", "rate"):
        number(d, key, where)
    tau = d.get("tau")
    if tau is not None and not (tau in ("inf", "-inf") or (isinstance(tau, (int, float)) and not isinstance(tau, bool))):
        raise SummaryError(f"{where}.tau: expected a number, \"inf\" or \"-inf\", got {kind(tau)}")
    return Point.from_dict(d)


def points_at(d: dict, key: str, where: str, optional: bool = False) -> list[Point]:
    if optional and key not in d:
        return []
    if key not in d:
        raise SummaryError(f"{where}: '{key}' is missing")
    return [point_of(p, f"{where}.{key}[{i}]") for i, p in enumerate(array(d[key], f"{where}.{key}"))]


def dicts(points: list[Point]) -> list[dict]:
    return [p.to_dict() for p in points]


# ----- computing the summary from runs ------------------------------------------------------
@dataclass
class TaskView:
    """What the report needs beyond the summary: per-sample data for histograms and examples."""
    system: str
    task: str
    samples: Samples
    scores: dict[str, np.ndarray]  # aggregate -> per-sample score (+inf for null)
    records: list[dict]
    acc1: np.ndarray
    acc2: np.ndarray


def system_of(records: list[dict]) -> tuple[str, str]:
    first = records[0]
    return Path(str(first.get("model", "model")).rstrip("/")).name, str(first.get("codec", ""))


def run_label(run: Run) -> str:
    args = run.policy_args
    if run.policy == "threshold" and "threshold" in args:
        return f"threshold τ={args['threshold']:g} ({args.get('score', 'max')})"
    if run.policy == "random" and "rate" in args:
        return f"random p={args['rate']:g} seed={args.get('seed', 0)}"
    return run.policy


def summarise(runs: list[Run], scorer: Scorer | None = None, seeds: int = 20) -> Summary:
    scorer = scorer or Scorer(include_paths=include_paths(runs))
    runs = unique(runs)
    systems: dict[str, SystemSummary] = {}
    views: list[TaskView] = []
    run_rows = []
    # Always runs first (they give the curves), complete ones before incomplete ones: an interrupted
    # run never takes a system's plain name from a finished one.
    for run in sorted(runs, key=lambda r: (r.policy != "always", not r.complete, r.name)):
        checkpoint, codec = system_of(run.records)
        key = f"{checkpoint}:{codec}"
        system = systems.setdefault(key, SystemSummary(checkpoint, codec, run.adapter))
        run_rows.append(RunRow(run.name, key, run.adapter, run.policy, run_label(run), run.policy_args, run.tasks,
                               len(run.records), sum(bool(r.get("error")) for r in run.records),
                               shown(run.results_file) if run.results_file else None,
                               [shown(p) for p in run.record_files]))
        by_task = defaultdict(list)
        for record in run.records:
            by_task[record["task"]].append(record)
        if run.policy == "always":
            for task, records in sorted(by_task.items()):
                name = key
                if task in systems[name].tasks:  # a second always run of this system and task: its own curves
                    name = f"{key}@{run.name}"
                    systems.setdefault(name, SystemSummary(checkpoint, codec, run.adapter))
                systems[name].always_runs.append(run.name)
                view = task_view(name, task, records, scorer)
                views.append(view)
                metric = scorer.metric(task).metric
                systems[name].tasks[task] = TaskSummary(metric, from_always(view, run, metric, seeds))
        else:
            for task, records in sorted(by_task.items()):
                point = run_point(run, task, records, scorer)  # first: it tells which metric the documents use
                system.tasks.setdefault(task, TaskSummary(scorer.metric(task).metric)).points.append(point)
    for view in views:
        for entry in systems[view.system].tasks[view.task].points:
            entry.derived_from_always = derive(view, entry)
    settings = Settings(CORRECT, TARGET, seeds, list(curves.RATES))
    return Summary(settings, run_rows, systems, views)


def unique(runs: list[Run]) -> list[Run]:
    """The same records reached twice (a results.json's records_dir and a directory of records)
    count once, as the run that has its results.json."""
    chosen: dict[str, Run] = {}
    for run in runs:
        if run.name not in chosen or (run.results_file and not chosen[run.name].results_file):
            chosen[run.name] = run
    return list(chosen.values())


def shown(path) -> str:
    """A path relative to the current directory when it lies below it (reports get committed)."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def include_paths(runs: list[Run]) -> list[str]:
    paths = []
    for run in runs:
        path = run.config.get("resolved_cli_args", {}).get("include_path")
        if path:
            paths.extend(p for p in str(path).split(",") if p)
    return paths


def task_view(system: str, task: str, records: list[dict], scorer: Scorer) -> TaskView:
    metric = scorer.metric(task)
    acc1 = np.array([metric.accuracy(r.get("doc", {}), r.get("answer_stage1")) for r in records])
    acc2 = np.array([metric.accuracy(r.get("doc", {}), r.get("answer_stage2")) for r in records])
    group, generic = cache_groups(records)
    samples = Samples.build(
        acc1, acc2, [r.get("score") for r in records],
        bytes1=[r["bytes_global"] for r in records], bytes2=[r["bytes_total"] for r in records],
        flops1=[sum(r["flops"].get(p, 0) for p in STAGE1_PARTS) for r in records],
        flops2=[r["flops_total"] - r["flops"].get("generic", 0) for r in records],
        group=group, generic=generic, keys=[f"{r['task']}/{r['doc_id']}" for r in records])
    scores = {agg: np.array([inf_if_none(r.get("scores", {}).get(agg)) for r in records]) for agg in AGGREGATES
              if all(agg in r.get("scores", {}) or r.get("error") for r in records)}
    return TaskView(system, task, samples, scores, records, acc1, acc2)


def inf_if_none(value) -> float:
    return math.inf if value is None else float(value)


def cache_groups(records: list[dict]) -> tuple[list[int], list[int]]:
    """The adapter caches the generic-prompt pass per image within a task and process: group
    the samples by (rank, image) and give each group the FLOPs of its one uncached pass. An
    image is the record's ``image_key`` (the cache's own key); records written before it
    existed fall back to the document (image_id, image_source, ...) or the sample itself, and
    a group whose pass was paid outside this task (all cached) gets the median pass of the task."""
    ids: dict[tuple, int] = {}
    group = []
    for r in records:
        doc = r.get("doc", {})
        name = r.get("image_key") or next((str(doc[k]) for k in IMAGE_KEYS if doc.get(k) not in (None, "")),
                                          f"{r['task']}/{r['doc_id']}")
        group.append(ids.setdefault((r.get("rank", r.get("_rank", 0)), name, tuple(r.get("image_size") or ())), len(ids)))
    generic = [0] * len(ids)
    cached = [True] * len(ids)
    for g, r in zip(group, records):
        generic[g] = max(generic[g], int(r["flops"].get("generic", 0)))
        cached[g] = cached[g] and bool(r.get("generic_cached"))
    paid = [f for f in generic if f > 0]
    for g in range(len(ids)):
        if generic[g] == 0 and cached[g] and paid:
            generic[g] = int(median(paid))
    return group, generic


def from_always(view: TaskView, run: Run, metric: str, seeds: int) -> FromAlways:
    s, records = view.samples, view.records
    never, always = curves.never(s), curves.always(s)
    gated = curves.threshold_curve(s)
    primary = records[0].get("score_name", "max")
    others = {agg: curves.threshold_curve(Samples(**{**s.__dict__, "score": scores}))
              for agg, scores in view.scores.items() if agg != primary}
    oracle_curve = curves.oracle_curve(s)
    random_curve = [curves.random_expected(s, p) for p in curves.RATES]
    band = [BandStep(**b) for b in curves.random_band(s, seeds=range(seeds))] if seeds else []
    bytes_original = sum(r.get("bytes_original", 0) for r in records) / s.n
    error = view.acc1 < CORRECT
    target = TARGET * always.accuracy
    reach = {name: savings(curves.cheapest_reaching(points, target), bytes_original, always)
             for name, points in (("gated", gated), ("random", random_curve), ("oracle", oracle_curve))}
    lmms = run.task_results(view.task).get(f"{metric},none")
    return FromAlways(
        n=s.n, errors=sum(bool(r.get("error")) for r in records), score_name=primary,
        stage1_correct=int((~error).sum()), bytes_original=bytes_original,
        lmms_eval_accuracy=lmms if isinstance(lmms, (int, float)) and math.isfinite(lmms) else None,
        never=never, always=always, oracle=curves.point(s, curves.oracle_mask(s)),
        auroc={agg: curves.auroc(scores, error) for agg, scores in {primary: s.score, **view.scores}.items()},
        target_accuracy=target, reach_target=reach, savings_never=savings(never, bytes_original, always),
        curves=Curves(gated, others, random_curve, band, oracle_curve))


def savings(p: Point | None, bytes_original: float, always: Point) -> Saving | None:
    if p is None:
        return None
    return Saving(p, 1 - p.bytes / bytes_original if bytes_original else None,
                  1 - p.bytes / always.bytes if always.bytes else None,
                  1 - p.flops / always.flops if always.flops else None)


def run_point(run: Run, task: str, records: list[dict], scorer: Scorer) -> RunPoint:
    """A run of any other policy: its own outcome, rescored like the curves."""
    n = len(records)
    metric = scorer.metric(task)
    p = Point(sum(metric.accuracy(r.get("doc", {}), r.get("answer")) for r in records) / n,
              sum(r["bytes_total"] for r in records) / n, sum(r["flops_total"] for r in records) / n,
              sum(bool(r.get("retransmitted")) for r in records) / n, run.policy_args.get("threshold")
              if run.policy == "threshold" else None)
    return RunPoint(run_label(run), run.name, run.policy, run.policy_args, n,
                    sum(bool(r.get("error")) for r in records), p)


def derive(view: TaskView, entry: RunPoint) -> Point | None:
    """What the system's always run says a threshold or random run should have given."""
    args = entry.policy_args
    if entry.policy == "threshold" and "threshold" in args:
        scores = view.scores.get(args.get("score", "max"), view.samples.score)
        return curves.threshold_point(Samples(**{**view.samples.__dict__, "score": scores}), args["threshold"])
    if entry.policy == "random" and "rate" in args:
        return curves.random_draw(view.samples, args["rate"], args.get("seed", 0))
    if entry.policy == "never":
        return curves.never(view.samples)
    return None  # always is the curve's end; other policies (tiles, ...) are not derivable


SCALARS = (str, int, float, bool, type(None))


@functools.lru_cache(maxsize=None)
def flat_encoder(level: int) -> json.JSONEncoder:
    """The C encoder writing a dict or list of plain values whose items sit at ``level + 1``."""
    return json.JSONEncoder(separators=(",\n" + " " * (level + 1), ": "), allow_nan=False)


def json_text(value, level: int = 0) -> str:
    """``json.dumps(value, indent=1, allow_nan=False)``, character for character, in a fraction
    of the time on a summary of thousands of points: json.dumps with an indent runs the json
    module's pure-Python encoder on every value, while here each dict or list of plain values
    (a point) is one call of its C encoder, its separators carrying the newline and indent."""
    pad = "\n" + " " * (level + 1)
    if isinstance(value, (dict, list)) and value:
        items = value.values() if isinstance(value, dict) else value
        keys_plain = not isinstance(value, dict) or all(isinstance(k, str) for k in value)
        if keys_plain and all(isinstance(v, SCALARS) for v in items):
            flat = flat_encoder(level).encode(value)
            return flat[0] + pad + flat[1:-1] + "\n" + " " * level + flat[-1]
        if isinstance(value, dict) and keys_plain:
            body = ("," + pad).join(f"{json.dumps(k)}: {json_text(v, level + 1)}" for k, v in value.items())
            return "{" + pad + body + "\n" + " " * level + "}"
        if isinstance(value, list):
            return "[" + pad + ("," + pad).join(json_text(v, level + 1) for v in value) + "\n" + " " * level + "]"
    # Anything else (scalars, empty containers, non-string keys): the json module itself, its
    # lines indented as deep as this value sits.
    return json.dumps(value, indent=1, allow_nan=False).replace("\n", "\n" + " " * level)
