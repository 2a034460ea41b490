"""Per-sample accuracy of any answer, with the task's own lmms-eval scoring.

The task's YAML is found through lmms-eval's TaskManager (the project's tasks/ directory and
any include path the run used, then lmms-eval's built-in tasks). An answer is scored the way
lmms-eval scores it in a run:

- a task with a ``process_results`` function: that function on the stored document and the
  answer. The accuracy is the first higher-is-better metric of the task's ``metric_list`` that
  the function returned for this document (MME returns ``mme_perception_score`` for some
  documents and ``mme_cognition_score`` for others): a number (TextVQA's ``exact_match``), or
  a dict whose ``score_key`` entry is the number (POPE's ``pope_accuracy``: ``{"score": 0/1}``),
  or, without one, the task's own aggregation function applied to that one sample's dict
  (MUIRBench, SEED-Bench: prediction and answer in, accuracy out);
- a task without one (docvqa_val's ``anls``, ``exact_match`` with options): the metric's own
  function from lmms-eval's metric registry, applied to the document's target
  (``doc_to_target``) as lmms-eval's generate_until scoring does: all targets at once for
  ``anls``, any matching target for the other metrics of a task with several targets.

The task's first ``filter_list`` pipeline, if it has one, is applied to the answer first.
Each (document, answer) pair is scored once: a report rescoring thousands of answers meets the
same pair again (stage 1 and stage 2 often agree; other runs repeat the always run's answers).
"""
from __future__ import annotations

import ast
import copy
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from collab_eval.analysis.task_calls import Unscorable, aggregate, judge_reason
from collab_eval.shipped import TASKS_DIR


def registered_metric(name: str) -> Callable:
    """lmms-eval's function for a metric name. Its registry dict is the one place lmms-eval
    keeps them (filled when lmms_eval.api.metrics is imported); the public ``get_metric``
    would fall back to downloading an HF ``evaluate`` metric with a warning, which a report
    must not do, so the dict is read here and only here."""
    import lmms_eval.api.metrics  # noqa: F401  (registers the built-in metrics)
    from lmms_eval.api.registry import METRIC_REGISTRY

    if name not in METRIC_REGISTRY:
        raise ValueError(f"metric {name!r} is not in lmms-eval's metric registry (known: {sorted(METRIC_REGISTRY)})")
    return METRIC_REGISTRY[name]


@dataclass
class TargetScorer:
    """lmms-eval's scoring of a generate_until task without process_results: each listed
    metric's registered function on (targets, answer)."""
    task: str
    metrics: dict[str, dict]  # metric name -> the extra keyword arguments its metric_list entry gives
    doc_to_target: object  # the YAML's doc_to_target: a column name, a template, a list, or a function
    target_kwargs: dict | None = None  # model_specific_target_kwargs' default, passed to a function

    def __call__(self, doc: dict, results: list) -> dict:
        answer = results[0] if isinstance(results[0], str) else str(results[0][0])
        targets = self.targets(doc)
        out = {}
        for name, kwargs in self.metrics.items():
            fn = registered_metric(name)
            if isinstance(targets, list) and name != "anls":  # several targets: right if any is
                values = [self.call(fn, name, [t], answer, kwargs) for t in targets]
                out[name] = 1.0 if any(values) else 0.0
            else:
                out[name] = self.call(fn, name, targets if isinstance(targets, list) else [targets], answer, kwargs)
        return out

    def call(self, fn, name: str, references: list, answer: str, kwargs: dict):
        try:
            value = fn(references=references, predictions=[answer], **kwargs)
        except TypeError as err:  # a pass-through metric (bleu, bypass...) scores a corpus, not a sample
            raise ValueError(f"task {self.task!r}: metric {name!r} has no per-sample score to rescore answers "
                             f"with ({err})") from err
        return value[name] if isinstance(value, dict) else value

    def targets(self, doc: dict):
        target = self.doc_to_target
        if callable(target):
            return target(doc, self.target_kwargs) if self.target_kwargs is not None else target(doc)
        if isinstance(target, str):
            if target in doc:
                return doc[target]
            from lmms_eval.utils import apply_template
            text = apply_template(target, doc)
            if len(text) >= 2 and text[0] == "[" and text[-1] == "]":
                try:
                    return ast.literal_eval(text)
                except (SyntaxError, ValueError):
                    pass
            return text
        if isinstance(target, (int, list)):
            return target
        raise ValueError(f"task {self.task!r}: doc_to_target {target!r} is neither a column, a template nor a function")


@dataclass
class TaskMetric:
    """One task's per-sample accuracy, and which of its metrics gave it."""
    task: str
    metrics: tuple[str, ...]  # the higher-is-better metrics, in metric_list order
    results: Callable  # (doc, [answer]) -> {metric: value}, as lmms-eval's process_results
    score_key: str = "score"
    answer_filter: Callable | None = None  # the task's first filter pipeline, on one answer
    # metric -> the task's own aggregation function, for a dict-valued metric without score_key
    aggregations: dict[str, Callable] = field(default_factory=dict)
    used: dict[str, int] = field(default_factory=dict)  # metric -> samples it scored, as they come
    cache: dict = field(default_factory=dict, repr=False)
    doc_keys: dict = field(default_factory=dict, repr=False)

    @property
    def metric(self) -> str:
        """The metric the accuracies are: its name, or the names the documents returned,
        in metric_list order (``mme_perception_score / mme_cognition_score``)."""
        used = [m for m in self.metrics if m in self.used]
        return " / ".join(used or self.metrics[:1])

    def accuracy(self, doc: dict, answer: str | None) -> float:
        key = (self.doc_key(doc), answer)
        if key not in self.cache:
            self.cache[key] = self.score(doc, answer)
        metric, value = self.cache[key]
        self.used[metric] = self.used.get(metric, 0) + 1
        return value

    def doc_key(self, doc: dict) -> str:
        """The document as text: the same document read twice has the same repr (one whose keys
        come in another order only misses the cache). Kept per document object (stage 1 and
        stage 2 share one), the object held so that its id is not reused."""
        held = self.doc_keys.get(id(doc))
        if held is None or held[0] is not doc:
            held = self.doc_keys[id(doc)] = (doc, repr(doc))
        return held[1]

    def score(self, doc: dict, answer: str | None) -> tuple[str, float]:
        response = self.answer_filter(doc, answer or "") if self.answer_filter else (answer or "")
        if isinstance(response, str):  # lmms-eval strips a generate_until answer before scoring it
            response = response.strip()
        # Some scorers normalise the document in place (TextVQA's answers): give each a copy.
        returned = self.results(copy.deepcopy(doc), [response])
        metric = next((m for m in self.metrics if m in returned), None)
        if metric is None:
            raise ValueError(f"task {self.task!r}: scoring returned {sorted(returned)}, none of the task's "
                             f"higher-is-better metrics {list(self.metrics)}")
        value = returned[metric]
        if isinstance(value, dict):
            if self.score_key in value:
                value = value[self.score_key]
            elif metric in self.aggregations:
                # Per-sample details (MUIRBench, SEED-Bench: prediction and answer) that only the
                # task's own aggregation turns into a number: that number for this one sample,
                # called as lmms-eval calls it (with its arguments where it takes them).
                value = aggregate(self.aggregations[metric], [value])
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise Unscorable(f"task {self.task!r}: metric {metric!r} cannot be scored per sample: its "
                                     f"aggregation {getattr(self.aggregations[metric], '__name__', '')} returned "
                                     f"{type(value).__name__}, not a number (a submission file, a corpus score)")
            else:
                raise ValueError(f"task {self.task!r}: metric {metric!r} returned a dict without {self.score_key!r} "
                                 f"(keys {sorted(value)}) and has no aggregation function; "
                                 "set score_key in the task YAML")
        try:
            return metric, float(value)
        except (TypeError, ValueError) as err:
            raise ValueError(f"task {self.task!r}: metric {metric!r} gave {value!r}, not a number") from err


def metric_from_config(task: str, config: dict) -> TaskMetric:
    judge = judge_reason(task, config)
    if judge:
        raise Unscorable(judge)
    if config.get("output_type", "generate_until") != "generate_until":
        raise ValueError(f"task {task!r} is a {config.get('output_type')!r} task; only generate_until tasks have "
                         "answers to rescore")
    metric_list = config.get("metric_list") or [{"metric": "exact_match"}]  # lmms-eval's generate_until default
    chosen = [m for m in metric_list if m.get("higher_is_better", True) and isinstance(m.get("metric"), str)]
    if not chosen:
        raise ValueError(f"task {task!r} has no higher-is-better metric")
    names = tuple(m["metric"] for m in chosen)
    results = config.get("process_results")
    if not callable(results):
        extra = {m["metric"]: {k: v for k, v in m.items() if k not in ("metric", "aggregation", "higher_is_better")}
                 for m in chosen}
        target_kwargs = config.get("model_specific_target_kwargs")
        results = TargetScorer(task, extra, config.get("doc_to_target"),
                               target_kwargs.get("default") if isinstance(target_kwargs, dict) else None)
    aggregations = {m["metric"]: m["aggregation"] for m in chosen if callable(m.get("aggregation"))}
    return TaskMetric(task, names, results, config.get("score_key", "score"), answer_filter(config.get("filter_list")),
                      aggregations)


def answer_filter(filter_list) -> Callable | None:
    """The task's first filter pipeline (what lmms-eval scores first) as answer -> response."""
    if not filter_list:
        return None
    from lmms_eval.filters import build_filter_ensemble

    first = filter_list[0]
    ensemble = build_filter_ensemble(first["name"], [[f["function"], {k: v for k, v in f.items() if k != "function"}]
                                                     for f in first["filter"]])

    def apply(doc: dict, answer: str):
        responses = [[answer]]
        for f in ensemble.filters:
            responses = f.apply(responses, [doc])
        return responses[0]
    return apply


class Scorer:
    """Task name -> TaskMetric, loading each task's YAML once."""

    def __init__(self, include_paths=()):
        self.include_paths = [str(p) for p in dict.fromkeys([TASKS_DIR, *map(Path, include_paths)]) if Path(p).is_dir()]
        self._metrics: dict[str, TaskMetric] = {}

    def metric(self, task: str) -> TaskMetric:
        if task not in self._metrics:
            self._metrics[task] = metric_from_config(task, self._config(task))
        return self._metrics[task]

    def accuracy(self, task: str, doc: dict, answer: str | None) -> float:
        return self.metric(task).accuracy(doc, answer)

    def _config(self, task: str) -> dict:
        try:
            return task_config(task, tuple(self.include_paths))
        except ValueError:
            raise
        except Exception as err:  # its module fails to import here (a judge client without a key, a missing package)
            raise Unscorable(f"task {task!r} cannot be loaded here: {type(err).__name__}: {err}") from err


@functools.lru_cache(maxsize=None)
def task_config(task: str, include_paths: tuple[str, ...]) -> dict:
    """The task's YAML config, loaded once per process (a report and a check in one process,
    or every Scorer of a test session, share it)."""
    from lmms_eval.utils import load_yaml_config

    # The project's tasks first (indexing them is fast); lmms-eval's own only if needed.
    for include_defaults in (False, True):
        entry = task_index(include_paths, include_defaults).get(task)
        if entry and entry.get("yaml_path", -1) != -1:
            return load_yaml_config(entry["yaml_path"], mode="full")
    raise ValueError(f"task {task!r} is not an lmms-eval task here (include paths: {list(include_paths)})")


@functools.lru_cache(maxsize=None)
def task_index(include_paths: tuple[str, ...], include_defaults: bool) -> dict:
    from lmms_eval.tasks import TaskManager

    return TaskManager(verbosity="WARNING", include_path=list(include_paths) or None,
                       include_defaults=include_defaults).task_index
