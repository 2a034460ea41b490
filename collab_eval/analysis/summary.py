"""From runs to the machine-readable summary: scoring, curves, tables' numbers.

A *system* is a checkpoint with a codec (``tiny-llava:png``): what a figure compares. Each
``always`` run of a system yields its curves per task; every other run (threshold, random,
never, or any policy added later) is one operating point per task on its system's figure.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median

import numpy as np

from collab_eval.analysis import curves
from collab_eval.analysis.curves import Point, Samples
from collab_eval.records import STAGE1_PARTS
from collab_eval.analysis.runs import Run
from collab_eval.analysis.scoring import Scorer

SCHEMA = "collab-eval/summary/1"
AGGREGATES = ("max", "mean", "first")
CORRECT = 0.5  # a stage-1 answer with per-sample accuracy >= this counts as right (AUROC, histograms)
TARGET = 0.99  # fraction of always-retransmit accuracy the cheapest operating point must reach
IMAGE_KEYS = ("image_id", "image_source", "image_path", "image_file")  # doc fields naming the image


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


@dataclass
class Summary:
    data: dict
    views: list[TaskView] = field(default_factory=list)


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
    runs = list({run.name: run for run in runs}.values())  # the same records reached twice count once
    systems: dict[str, dict] = {}
    views: list[TaskView] = []
    run_rows = []
    for run in sorted(runs, key=lambda r: (r.policy != "always", r.name)):
        checkpoint, codec = system_of(run.records)
        key = f"{checkpoint}:{codec}"
        new_system = {"checkpoint": checkpoint, "codec": codec, "adapter": run.adapter, "always_runs": [], "tasks": {}}
        system = systems.setdefault(key, new_system)
        run_rows.append({"name": run.name, "system": key, "adapter": run.adapter, "policy": run.policy,
                         "label": run_label(run), "policy_args": run.policy_args, "tasks": run.tasks,
                         "samples": len(run.records), "errors": sum(bool(r.get("error")) for r in run.records),
                         "results_file": shown(run.results_file) if run.results_file else None,
                         "record_files": [shown(p) for p in run.record_files]})
        by_task = defaultdict(list)
        for record in run.records:
            by_task[record["task"]].append(record)
        if run.policy == "always":
            for task, records in sorted(by_task.items()):
                name = key
                if task in systems[name]["tasks"]:  # a second always run of this system and task: its own curves
                    name = f"{key}@{run.name}"
                    systems.setdefault(name, {**new_system, "always_runs": [], "tasks": {}})
                systems[name]["always_runs"].append(run.name)
                view = task_view(name, task, records, scorer)
                views.append(view)
                systems[name]["tasks"][task] = task_summary(view, run, scorer.metric(task).metric, seeds)
        else:
            for task, records in sorted(by_task.items()):
                point = run_point(run, task, records, scorer)  # first: it tells which metric the documents use
                entry = system["tasks"].setdefault(task, {"metric": scorer.metric(task).metric, "points": []})
                entry.setdefault("points", []).append(point)
    for view in views:
        for entry in systems[view.system]["tasks"][view.task]["points"]:
            derived = derive(view, entry)
            if derived:
                entry["derived_from_always"] = derived.to_dict()
    return Summary({"schema": SCHEMA, "settings": {"correct_at": CORRECT, "target_fraction": TARGET,
                                                     "random_seeds": seeds, "random_rates": list(curves.RATES)},
                    "runs": run_rows, "systems": systems}, views)


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
        path = run.results.get("config", {}).get("resolved_cli_args", {}).get("include_path")
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


def task_summary(view: TaskView, run: Run, metric: str, seeds: int) -> dict:
    s, records = view.samples, view.records
    never, always = curves.never(s), curves.always(s)
    gated = curves.threshold_curve(s)
    primary = records[0].get("score_name", "max")
    others = {agg: curves.threshold_curve(Samples(**{**s.__dict__, "score": scores}))
              for agg, scores in view.scores.items() if agg != primary}
    oracle_curve = curves.oracle_curve(s)
    random_curve = [curves.random_expected(s, p) for p in curves.RATES]
    band = curves.random_band(s, seeds=range(seeds)) if seeds else []
    bytes_original = sum(r.get("bytes_original", 0) for r in records) / s.n
    error = view.acc1 < CORRECT
    target = TARGET * always.accuracy
    reach = {name: savings(curves.cheapest_reaching(points, target), bytes_original, always)
             for name, points in (("gated", gated), ("random", random_curve), ("oracle", oracle_curve))}
    lmms = run.results.get("results", {}).get(view.task, {}).get(f"{metric},none")
    return {
        "metric": metric, "n": s.n, "errors": sum(bool(r.get("error")) for r in records),
        "score_name": primary, "stage1_correct": int((~error).sum()),
        "bytes_original": bytes_original,
        "lmms_eval_accuracy": lmms if isinstance(lmms, (int, float)) and math.isfinite(lmms) else None,
        "never": never.to_dict(), "always": always.to_dict(), "oracle": curves.point(s, curves.oracle_mask(s)).to_dict(),
        "auroc": {agg: curves.auroc(scores, error) for agg, scores in {primary: s.score, **view.scores}.items()},
        "target_accuracy": target,
        "reach_target": reach,
        "savings_never": savings(never, bytes_original, always),
        "curves": {
            "gated": [p.to_dict() for p in gated],
            "gated_other_scores": {agg: [p.to_dict() for p in c] for agg, c in others.items()},
            "random": [p.to_dict() for p in random_curve],
            "random_band": band,
            "oracle": [p.to_dict() for p in oracle_curve],
        },
        "points": [],
    }


def savings(p: Point | None, bytes_original: float, always: Point) -> dict | None:
    if p is None:
        return None
    return {**p.to_dict(),
            "saving_vs_original": 1 - p.bytes / bytes_original if bytes_original else None,
            "saving_vs_always": 1 - p.bytes / always.bytes if always.bytes else None,
            "flops_saving_vs_always": 1 - p.flops / always.flops if always.flops else None}


def run_point(run: Run, task: str, records: list[dict], scorer: Scorer) -> dict:
    """A run of any other policy: its own outcome, rescored like the curves."""
    n = len(records)
    metric = scorer.metric(task)
    p = Point(sum(metric.accuracy(r.get("doc", {}), r.get("answer")) for r in records) / n,
              sum(r["bytes_total"] for r in records) / n, sum(r["flops_total"] for r in records) / n,
              sum(bool(r.get("retransmitted")) for r in records) / n, run.policy_args.get("threshold")
              if run.policy == "threshold" else None)
    return {"label": run_label(run), "run": run.name, "policy": run.policy, "policy_args": run.policy_args, "n": n,
            "errors": sum(bool(r.get("error")) for r in records), **p.to_dict()}


def derive(view: TaskView, entry: dict) -> Point | None:
    """What the system's always run says a threshold or random run should have given."""
    args = entry.get("policy_args", {})
    if entry["policy"] == "threshold" and "threshold" in args:
        scores = view.scores.get(args.get("score", "max"), view.samples.score)
        return curves.threshold_point(Samples(**{**view.samples.__dict__, "score": scores}), args["threshold"])
    if entry["policy"] == "random" and "rate" in args:
        return curves.random_draw(view.samples, args["rate"], args.get("seed", 0))
    if entry["policy"] == "never":
        return curves.never(view.samples)
    return None  # always is the curve's end; other policies (tiles, ...) are not derivable


def points_of(entries: list[dict]) -> list[Point]:
    return [Point.from_dict(e) for e in entries]
