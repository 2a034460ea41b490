"""Costed variants of lmms-eval tasks: the task's own scoring plus each sample's bytes,
FLOPs and retransmission as metrics that lmms-eval averages into results.json.

A costed variant is a YAML that ``include``s the original task's YAML (so prompts, data,
filters and generation settings stay the original's) and overrides three keys with the
attributes of a ``CostedTask`` built in a small Python file beside it:

- ``process_docs``: the original's, then a column holding each document's sample key
  (task, split, doc id) - ``process_results`` receives only the document, not its id;
- ``process_results``: the original's (or, for a task scored by lmms-eval's built-in
  metrics, those metrics) plus the costs the adapter handed over for that key;
- ``metric_list``: the original's plus the three cost metrics.

``collab-eval costed-tasks`` writes such pairs for any lmms-eval task or group; the
shipped local tasks in ``tasks/`` are built the same way.
"""
from __future__ import annotations

import os
from pathlib import Path

import datasets

from collab_eval import cost_handoff

COST_METRIC_LIST = [{"metric": name, "aggregation": "mean", "higher_is_better": False}
                    for name in cost_handoff.COST_METRICS]
# Keys of a metric_list entry that configure lmms-eval, not the metric function.
_METRIC_CONFIG_KEYS = {"metric", "aggregation", "higher_is_better"}


def doc_to_visual(doc):
    """The document's image exactly as stored: the edge (collab_eval.edge.sanitize) turns it
    into upright RGB, which handles EXIF rotation and 16-bit images that a bare
    ``convert("RGB")`` gets wrong."""
    return [doc["image"]]


class CostedTask:
    """The costed variant ``name`` of the task configured by ``original`` (a YAML path)."""

    def __init__(self, original: str | os.PathLike, name: str, split: str | None = None):
        from lmms_eval.utils import load_yaml_config  # lmms-eval's own resolution of includes and !function
        self.name = name
        self.config = load_yaml_config(yaml_path=str(original), mode="full")
        self.split = split or self.config.get("test_split") or self.config.get("validation_split")
        if not self.split:
            raise ValueError(f"{original}: the task names no test_split or validation_split to evaluate")
        if self.config.get("output_type", "generate_until") != "generate_until":
            raise ValueError(f"{original}: output_type {self.config.get('output_type')!r}; collab adapters "
                             "answer generate_until tasks only")
        original_metrics = self.config.get("metric_list") or []
        self.metric_list = [dict(m) for m in original_metrics if m["metric"] not in cost_handoff.COST_METRICS] \
            + [dict(m) for m in COST_METRIC_LIST]

    def process_docs(self, docs):
        original = self.config.get("process_docs")
        if callable(original):
            docs = original(docs)
        if not isinstance(docs, datasets.Dataset):
            raise TypeError(f"{self.name}: process_docs gave {type(docs).__name__}, expected a datasets.Dataset")
        keys = [cost_handoff.sample_key(self.name, self.split, doc_id) for doc_id in range(len(docs))]
        if cost_handoff.KEY_COLUMN in docs.column_names:
            docs = docs.remove_columns(cost_handoff.KEY_COLUMN)
        return docs.add_column(cost_handoff.KEY_COLUMN, keys)

    def process_results(self, doc, results, **kwargs):
        original = self.config.get("process_results")
        scores = original(doc, results, **kwargs) if callable(original) else self.builtin_scores(doc, results)
        return {**scores, **cost_handoff.lookup(doc)}

    def builtin_scores(self, doc, results) -> dict:
        """A task without process_results is scored by lmms-eval's registered metrics on
        (doc_to_target, the answer), as lmms-eval does for such a generate_until task."""
        from lmms_eval.api.registry import get_metric
        from lmms_eval.utils import apply_template
        target = self.config.get("doc_to_target")
        if callable(target):
            gold = target(doc)
        elif isinstance(target, str):
            gold = doc[target] if target in doc else apply_template(target, doc)
        else:
            raise ValueError(f"{self.name}: doc_to_target {target!r} is neither a function nor a column or template")
        gold = list(gold) if isinstance(gold, (list, tuple)) else [gold]
        answers = [r.strip() if r is not None else "" for r in results]
        scores = {}
        for entry in self.config.get("metric_list") or []:
            name = entry["metric"]
            if name in cost_handoff.COST_METRICS:
                continue
            kwargs = {k: v for k, v in entry.items() if k not in _METRIC_CONFIG_KEYS}
            score = get_metric(name)(references=gold, predictions=answers, **kwargs)
            scores[name] = score[name] if isinstance(score, dict) else score
        return scores


# ----- generating costed variants ------------------------------------------------
def leaf_tasks(manager, name: str) -> list[str]:
    """The tasks a task, group or tag name stands for, in order."""
    from lmms_eval.utils import load_yaml_config
    entry = manager.task_index.get(name)
    if entry is None:
        raise ValueError(f"unknown lmms-eval task, group or tag {name!r}")
    if entry["type"] == "task":
        return [name]
    if entry["type"] == "group" and entry.get("yaml_path", -1) != -1:
        members = load_yaml_config(entry["yaml_path"], mode="simple")["task"]
    elif isinstance(entry.get("task"), list):
        members = entry["task"]
    else:
        raise ValueError(f"{name!r} is a {entry['type']} whose tasks cannot be listed")
    tasks = []
    for member in members:
        if not isinstance(member, str):
            raise ValueError(f"group {name!r} defines a task inline ({member!r:.60}); only named tasks can be costed")
        tasks.extend(t for t in leaf_tasks(manager, member) if t not in tasks)
    return tasks


def write_costed(original: str | os.PathLike, costed: str, out: str | os.PathLike, source: str | None = None) -> str:
    """Write the costed variant ``costed`` of the task YAML ``original`` into ``out``: a
    YAML including the original, and the Python file its three overrides come from."""
    original, out = Path(original).resolve(), Path(out)
    CostedTask(original, costed)  # fails here, at generation, on a task it cannot wrap
    module = costed.replace("-", "_")
    (out / f"{module}.py").write_text(
        f'"""Generated by `collab-eval costed-tasks`: {source or original.name} with per-sample costs."""\n'
        "from collab_eval.costed_tasks import CostedTask\n\n"
        f"task = CostedTask({str(original)!r}, name={costed!r})\n"
        "process_docs, process_results, metric_list = task.process_docs, task.process_results, task.metric_list\n")
    (out / f"{module}.yaml").write_text(
        f"# Generated by `collab-eval costed-tasks`: {source or original.name} ({original}) with per-sample costs.\n"
        f"include: {original}\n"
        f"task: {costed}\n"
        "tag: []\n"
        f"process_docs: !function {module}.process_docs\n"
        f"process_results: !function {module}.process_results\n"
        f"metric_list: !function {module}.metric_list\n")
    return costed


def write_costed_tasks(names: list[str], out: str | os.PathLike, include_path: str | None = None,
                       prefix: str = "collab_") -> list[str]:
    """Write a costed variant ``<prefix><task>`` (YAML + Python file) for every task that
    ``names`` stand for, and a group ``<prefix><name>`` for every group or tag among them.
    Returns the costed task and group names written."""
    from lmms_eval.tasks import TaskManager
    manager = TaskManager(include_path=include_path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        tasks = leaf_tasks(manager, name)
        for task in tasks:
            written.append(write_costed(manager.task_index[task]["yaml_path"], prefix + task, out, source=task))
        if tasks != [name]:
            group = prefix + name
            (out / f"{group}.yaml").write_text(
                f"# Generated by `collab-eval costed-tasks`: the costed tasks of {name}.\n"
                f"group: {group}\ntask:\n" + "".join(f"  - {prefix}{t}\n" for t in tasks))
            written.append(group)
    return written
