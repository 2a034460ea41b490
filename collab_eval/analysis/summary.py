"""From runs to the machine-readable summary: scoring, curves, tables' numbers.

A *system* is a checkpoint with every setting that changes answers or costs
(collab_eval.systems), named ``checkpoint:codec`` then the settings not at their default
(``tiny-llava:png``, ``tiny-llava:png dtype=bfloat16``): what a figure compares. Each
``always`` run of a system yields its curves per task; every other run (threshold, random,
never, or any policy added later) is one operating point per task on its system's figure.

The summary is a tree of pydantic models (:class:`Summary` down to :class:`curves.Point`),
declared once: summary.json is their JSON (``Summary.write``), read back into the same types
by ``Summary.read``, which names the place of anything malformed.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_serializer, model_validator

from collab_eval.analysis import curves, gaps
from collab_eval.analysis.calibrate import Calibration
from collab_eval.analysis.curves import BandStep, Point, Samples
from collab_eval.analysis.latency import LatencyProfile
from collab_eval.analysis.runs import Run, read_json, warn_on_stderr
from collab_eval.analysis.scoring import Scorer
from collab_eval.analysis.views import TaskView, settings_of, system_of, task_view
from collab_eval.records import SampleRecord
from collab_eval.systems import differing, system_key, system_settings
from collab_eval.typed_json import is_none, problem

SCHEMA = "collab-eval/summary/1"
CORRECT = 0.5  # a stage-1 answer with per-sample accuracy >= this counts as right (AUROC, histograms)
TARGET = 0.99  # fraction of always-retransmit accuracy the cheapest operating point must reach


class SummaryError(ValueError):
    """A summary.json that is not one: says where and what was expected."""


# ----- the summary's types (JSON key order is the fields' order) ------------------------------
def inline(data: Any, field: str, model: type[BaseModel], when=None) -> Any:
    """Reading: gather the keys of the model ``field`` holds, which JSON writes beside its
    owner's own keys, into that field (only ``when`` one of those keys is there, if given)."""
    if not isinstance(data, dict) or field in data or (when is not None and not any(key in data for key in when)):
        return data  # not JSON (constructed with the field itself), or without the inlined model's keys
    inner = {key: data[key] for key in model.model_fields if key in data}
    return {**{k: v for k, v in data.items() if k not in inner}, field: inner}


def flatten(data: dict, field: str) -> dict:
    """Writing: the keys of ``field``'s model in its place, beside its owner's own."""
    out = {}
    for key, value in data.items():
        if key == field:
            out.update(value or {})
        else:
            out[key] = value
    return out


class SummarySettings(BaseModel):
    """What the summary was computed with: when a stage-1 answer counts as right, the target
    for the cheapest point, and the random baseline's seeds and rates."""
    correct_at: float
    target_fraction: float
    random_seeds: int
    random_rates: list[float] = Field(default_factory=list)


def default_settings() -> SummarySettings:
    return SummarySettings(correct_at=CORRECT, target_fraction=TARGET, random_seeds=0, random_rates=list(curves.RATES))


class Saving(Point):
    """An operating point with what it saves against the original image and against always."""
    saving_vs_original: float | None = None
    saving_vs_always: float | None = None
    flops_saving_vs_always: float | None = None


class Curves(BaseModel):
    gated: list[Point]  # the entropy gate at every threshold, cost ascending
    gated_other_scores: dict[str, list[Point]] = Field(default_factory=dict)  # the gate on the other aggregations
    random: list[Point] = Field(default_factory=list)  # random retransmission's expectation at each rate
    random_band: list[BandStep] = Field(default_factory=list)
    oracle: list[Point] = Field(default_factory=list)


class FromAlways(BaseModel):
    """What one ``always`` run gives for one task: its ends, the oracle and every curve."""
    n: int
    errors: int = 0
    score_name: str = "max"
    stage1_correct: int = 0
    bytes_original: float = 0.0
    lmms_eval_accuracy: float | None = None
    never: Point
    always: Point
    oracle: Point
    auroc: dict[str, float | None] = Field(default_factory=dict)
    target_accuracy: float = 0.0
    # gated / random / oracle: cheapest reaching it
    reach_target: dict[str, Saving | None] = Field(default_factory=dict)
    savings_never: Saving | None = None
    curves: Curves


class RunPoint(BaseModel):
    """A run of any policy but always: its own outcome on one task, rescored like the curves.
    In JSON the point's keys sit beside the run's."""
    INLINED: ClassVar[tuple[str, ...]] = ("point",)

    label: str = ""
    run: str = ""
    policy: str
    policy_args: dict = Field(default_factory=dict)
    n: int
    errors: int = 0
    point: Point
    # What the system's always run predicts for the same policy (left out when it has none).
    derived_from_always: Point | None = Field(default=None, exclude_if=is_none)

    @model_validator(mode="before")
    @classmethod
    def _inline_point(cls, data: Any) -> Any:
        return inline(data, "point", Point)

    @model_serializer(mode="wrap")
    def _flatten_point(self, handler) -> dict:
        return flatten(handler(self), "point")


class TaskSummary(BaseModel):
    """One task of one system. In JSON the always run's results (``from_always``) sit beside
    the metric and the other runs' points; a task without an always run has none of them."""
    INLINED: ClassVar[tuple[str, ...]] = ("from_always",)

    metric: str
    # Why the task's answers could not be scored (an external judge, no per-sample score): then no curves or points.
    unscored: str | None = Field(default=None, exclude_if=is_none)
    from_always: FromAlways | None = None  # None when the system has no always run of this task
    points: list[RunPoint] = Field(default_factory=list)
    # collab-eval report --calibrate: calibrate.Calibration with its threshold's point on the whole run.
    calibrated: Calibration | None = Field(default=None, exclude_if=is_none)
    # collab-eval report --link: per link spec, latency of never/always/the gated curve (latency.py).
    latency: dict[str, LatencyProfile] | None = Field(default=None, exclude_if=is_none)

    @model_validator(mode="before")
    @classmethod
    def _inline_from_always(cls, data: Any) -> Any:
        return inline(data, "from_always", FromAlways, when=("curves", "never", "always", "n"))

    @model_serializer(mode="wrap")
    def _flatten_from_always(self, handler) -> dict:
        return flatten(handler(self), "from_always")


class SystemSummary(BaseModel):
    checkpoint: str = ""
    codec: str = ""
    adapter: str = ""
    # Every setting that tells the system apart (collab_eval.systems); absent from summaries written
    # before it existed (read as {}: the defaults with ``codec``, and written back absent).
    settings: dict[str, str | int | float | bool | None] = Field(default_factory=dict, exclude_if=lambda v: not v)
    always_runs: list[str] = Field(default_factory=list)
    tasks: dict[str, TaskSummary]

    def full_settings(self) -> dict:
        """Every system setting, defaults filled in (collab_eval.systems)."""
        return system_settings(self.settings, self.codec)

    def label_parts(self) -> tuple[str, dict]:
        return self.checkpoint, self.full_settings()


class RunRow(BaseModel):
    """What was read: one run."""
    name: str
    system: str = ""
    adapter: str = ""
    policy: str = ""
    label: str = ""
    policy_args: dict = Field(default_factory=dict)
    tasks: list[str] = Field(default_factory=list)
    samples: int = 0
    errors: int = 0
    results_file: str | None = None
    record_files: list[str] = Field(default_factory=list)
    # Why its records are not the whole run (analysis.gaps): samples present of planned, a cut file.
    incomplete: list[str] = Field(default_factory=list, exclude_if=lambda v: not v)


class Summary(BaseModel):
    """summary.json. ``views`` (per-sample data for the report) is not part of it."""
    schema_: str = Field(default=SCHEMA, alias="schema")
    settings: SummarySettings = Field(default_factory=default_settings)
    runs: list[RunRow] = Field(default_factory=list)
    systems: dict[str, SystemSummary]
    # TaskViews: per-sample data for the report
    views: list[Any] = Field(default_factory=list, exclude=True, repr=False)
    # The runs read and the scorer that scored them: for the report's sample browser (not in summary.json)
    read_runs: list[Any] = Field(default_factory=list, exclude=True, repr=False)
    scorer: Any = Field(default=None, exclude=True, repr=False)

    model_config = ConfigDict(populate_by_name=True)

    def to_json(self) -> dict:
        """summary.json's content, as plain JSON values."""
        return self.model_dump(by_alias=True)

    @classmethod
    def from_json(cls, data: Any) -> "Summary":
        """Raises SummaryError saying where the JSON is not a summary (e.g. ``systems['x'].tasks``)."""
        if isinstance(data, dict) and "systems" not in data:
            raise SummaryError("the top level has no 'systems': not a summary.json written by collab-eval report")
        try:
            return cls.model_validate(data, strict=True)
        except ValidationError as err:
            raise SummaryError(problem(cls, err)) from None

    @classmethod
    def read(cls, path) -> "Summary":
        """A summary.json from disk; any problem is a SummaryError naming the file and the place."""
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
        Path(path).write_text(json.dumps(self.to_json(), indent=1, allow_nan=False) + "\n", encoding="utf-8")


def system_labels(summary: "Summary") -> dict[str, str]:
    """Each system's name as the report shows it: its checkpoint and the settings that differ
    among the summary's systems (``smalldetail-llava dtype=bfloat16``), never a run id."""
    return differing({name: s.label_parts() for name, s in summary.systems.items()})


# ----- computing the summary from runs ------------------------------------------------------
def run_label(run: Run) -> str:
    args = run.policy_args
    if run.policy == "threshold" and "threshold" in args:
        # float(): records keep an infinite threshold as the string "inf" (JSON has no infinity)
        return f"threshold τ={float(args['threshold']):g} ({args.get('score', 'max')})"
    if run.policy == "random" and "rate" in args:
        return f"random p={float(args['rate']):g} seed={args.get('seed', 0)}"
    if run.policy == "never":
        baseline = never_label(run)
        return f"{baseline} (never)" if baseline else "never"
    return run.policy


def never_label(run: Run) -> str:
    """What the run's family calls its never runs (``Family.never_label``: "HD baseline" for
    LLaVA-NeXT), or "" (also for a family not installed here). The family: the run's lmms-eval
    model, else the model id its records' run id starts with (run_session.new_run_id)."""
    from collab_eval import families
    model = run.adapter if run.adapter != "collab" else run.records[0].run_id.partition("-")[0] if run.records else ""
    try:
        return families.get(model).never_label
    except families.FamilyError:
        return ""


def summarise(runs: list[Run], scorer: Scorer | None = None, seeds: int = 20, warn=warn_on_stderr) -> Summary:
    scorer = scorer or Scorer(include_paths=include_paths(runs))
    runs = unique(runs)
    systems: dict[str, SystemSummary] = {}
    views: list[TaskView] = []
    run_rows = []
    # Always runs first (they give the curves), complete ones before incomplete ones: an interrupted
    # run never takes a system's plain name from a finished one.
    for run in sorted(runs, key=lambda r: (r.policy != "always", not r.complete, r.name)):
        checkpoint, codec = system_of(run.records)
        settings = settings_of(run.records)
        key = system_key(checkpoint, settings)
        system = systems.setdefault(key, SystemSummary(checkpoint=checkpoint, codec=codec, adapter=run.adapter,
                                                       settings=settings, tasks={}))
        run_rows.append(RunRow(name=run.name, system=key, adapter=run.adapter, policy=run.policy, label=run_label(run),
                               policy_args=run.policy_args, tasks=run.tasks, samples=len(run.records),
                               errors=failed(run.records),
                               results_file=shown(run.results_file) if run.results_file else None,
                               record_files=[shown(p) for p in run.record_files], incomplete=gaps.incomplete(run)))
        by_task = defaultdict(list)
        for record in run.records:
            by_task[record.task].append(record)
        if run.policy == "always":
            for task, records in sorted(by_task.items()):
                name, repeat = key, 1
                while task in systems[name].tasks:  # another always run of this system and task: its own curves
                    repeat += 1
                    name = f"{key} #{repeat}"
                    systems.setdefault(name, SystemSummary(checkpoint=checkpoint, codec=codec, adapter=run.adapter,
                                                           settings=settings, tasks={}))
                systems[name].always_runs.append(run.name)
                try:
                    view = task_view(name, task, records, scorer)
                except Exception as err:  # noqa: BLE001  -- the task's own functions: one task fails, not the report
                    systems[name].tasks[task] = unscored(task, err, warn)
                    continue
                views.append(view)
                metric = scorer.metric(task).metric
                systems[name].tasks[task] = TaskSummary(metric=metric,
                                                        from_always=from_always(view, run, metric, seeds))
        else:
            for task, records in sorted(by_task.items()):
                if system.tasks.get(task) and system.tasks[task].unscored:
                    continue
                try:
                    point = run_point(run, task, records, scorer)  # first: it tells which metric the documents use
                except Exception as err:  # noqa: BLE001  -- as above
                    system.tasks[task] = unscored(task, err, warn)
                    continue
                system.tasks.setdefault(task, TaskSummary(metric=scorer.metric(task).metric)).points.append(point)
    for view in views:
        for entry in systems[view.system].tasks[view.task].points:
            entry.derived_from_always = derive(view, entry)
    settings = SummarySettings(correct_at=CORRECT, target_fraction=TARGET, random_seeds=seeds,
                               random_rates=list(curves.RATES))
    return Summary(settings=settings, runs=run_rows, systems=systems, views=views, read_runs=runs, scorer=scorer)


def unscored(task: str, err: Exception, warn) -> TaskSummary:
    """A task whose answers cannot be scored here: its reason, in the summary and as a warning."""
    reason = str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"
    warn(f"{task}: not scored, its section says why: {reason}")
    return TaskSummary(metric="–", unscored=reason)


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


def from_always(view: TaskView, run: Run, metric: str, seeds: int) -> FromAlways:
    s, records = view.samples, view.records
    never, always = curves.never(s), curves.always(s)
    gated = curves.threshold_curve(s)
    primary = records[0].score_name
    others = {agg: curves.threshold_curve(Samples(**{**s.__dict__, "score": scores}))
              for agg, scores in view.scores.items() if agg != primary}
    oracle_curve = curves.oracle_curve(s)
    random_curve = [curves.random_expected(s, p) for p in curves.RATES]
    band = curves.random_band(s, seeds=range(seeds)) if seeds else []
    bytes_original = sum(r.bytes_original for r in records) / s.n
    error = view.acc1 < CORRECT
    target = TARGET * always.accuracy
    reach = {name: savings(curves.cheapest_reaching(points, target), bytes_original, always)
             for name, points in (("gated", gated), ("random", random_curve), ("oracle", oracle_curve))}
    lmms = run.task_results(view.task).get(f"{metric},none")
    return FromAlways(
        n=s.n, errors=failed(records), score_name=primary,
        stage1_correct=int((~error).sum()), bytes_original=bytes_original,
        lmms_eval_accuracy=lmms if isinstance(lmms, (int, float)) and math.isfinite(lmms) else None,
        never=never, always=always, oracle=curves.point(s, curves.oracle_mask(s)),
        auroc={agg: curves.auroc(scores, error) for agg, scores in {primary: s.score, **view.scores}.items()},
        target_accuracy=target, reach_target=reach, savings_never=savings(never, bytes_original, always),
        curves=Curves(gated=gated, gated_other_scores=others, random=random_curve, random_band=band,
                      oracle=oracle_curve))


def savings(p: Point | None, bytes_original: float, always: Point) -> Saving | None:
    if p is None:
        return None
    return Saving(**dict(p), saving_vs_original=1 - p.bytes / bytes_original if bytes_original else None,
                  saving_vs_always=1 - p.bytes / always.bytes if always.bytes else None,
                  flops_saving_vs_always=1 - p.flops / always.flops if always.flops else None)


def run_point(run: Run, task: str, records: list[SampleRecord], scorer: Scorer) -> RunPoint:
    """A run of any other policy: its own outcome, rescored like the curves."""
    n = len(records)
    metric = scorer.metric(task)
    p = Point(accuracy=sum(metric.accuracy(r.doc, r.answer) for r in records) / n,
              bytes=sum(r.bytes_total for r in records) / n, flops=sum(r.flops_total for r in records) / n,
              rate=sum(r.retransmitted for r in records) / n,
              tau=run.policy_args.get("threshold") if run.policy == "threshold" else None)
    return RunPoint(label=run_label(run), run=run.name, policy=run.policy, policy_args=run.policy_args, n=n,
                    errors=failed(records), point=p)


def failed(records: list[SampleRecord]) -> int:
    return sum(bool(r.error) for r in records)


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


