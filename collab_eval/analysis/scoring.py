"""Per-sample accuracy of any answer, with the task's own lmms-eval scoring.

The task's YAML is found through lmms-eval's TaskManager (the project's tasks/ directory and
any include path the run used, then lmms-eval's built-in tasks), and its ``process_results``
is called on the stored document with the answer. The accuracy is the task's first
higher-is-better metric: a number (TextVQA's ``exact_match``), or a dict whose
``score_key`` entry is the number (POPE's ``pope_accuracy``: ``{"score": 0/1, ...}``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from collab_eval.shipped import TASKS_DIR



@dataclass(frozen=True)
class TaskMetric:
    task: str
    metric: str
    process_results: Callable
    score_key: str = "score"

    def accuracy(self, doc: dict, answer: str | None) -> float:
        # Some scorers normalise the document in place (TextVQA's answers): give each a copy.
        value = self.process_results(copy.deepcopy(doc), [answer or ""])[self.metric]
        if isinstance(value, dict):
            value = value[self.score_key]
        return float(value)


def metric_from_config(task: str, config: dict) -> TaskMetric:
    process_results = config.get("process_results")
    if not callable(process_results):
        raise ValueError(f"task {task!r} has no process_results function to score answers with")
    metrics = [m for m in config.get("metric_list", []) if m.get("higher_is_better", True)]
    if not metrics:
        raise ValueError(f"task {task!r} has no higher-is-better metric")
    return TaskMetric(task, metrics[0]["metric"], process_results, config.get("score_key", "score"))


class Scorer:
    """Task name -> TaskMetric, loading each task's YAML once."""

    def __init__(self, include_paths=()):
        self.include_paths = [str(p) for p in dict.fromkeys([TASKS_DIR, *map(Path, include_paths)]) if Path(p).is_dir()]
        self._metrics: dict[str, TaskMetric] = {}
        self._managers: list = []

    def metric(self, task: str) -> TaskMetric:
        if task not in self._metrics:
            self._metrics[task] = metric_from_config(task, self._config(task))
        return self._metrics[task]

    def accuracy(self, task: str, doc: dict, answer: str | None) -> float:
        return self.metric(task).accuracy(doc, answer)

    def _config(self, task: str) -> dict:
        from lmms_eval.tasks import TaskManager
        from lmms_eval.utils import load_yaml_config

        # The project's tasks first (indexing them is fast); lmms-eval's own only if needed.
        for include_defaults in (False, True):
            if len(self._managers) <= include_defaults:
                self._managers.append(TaskManager(verbosity="WARNING", include_path=self.include_paths or None,
                                                  include_defaults=include_defaults))
            entry = self._managers[include_defaults].task_index.get(task)
            if entry and entry.get("yaml_path", -1) != -1:
                return load_yaml_config(entry["yaml_path"], mode="full")
        raise ValueError(f"task {task!r} is not an lmms-eval task here (include paths: {self.include_paths})")
