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

A variant may also override the task's prompt settings: ``--set KEY=VALUE`` sets KEY in the
task's ``lmms_eval_specific_kwargs.default`` (the settings lmms-eval passes to ``doc_to_text``
for a model without an entry of its own there, which is every collab adapter), e.g. ``ocr=true``
for TextVQA's OCR tokens. The variant's name says so: ``collab_textvqa_val_ocr``.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import datasets
import yaml

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


def parse_overrides(items: list[str]) -> dict:
    """``KEY=VALUE`` strings as a dict; VALUE is read as a YAML scalar (``true`` a bool, ``3`` an
    int, anything else a string)."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key.strip()):
            raise ValueError(f"--set {item!r}: expected KEY=VALUE with KEY a prompt setting's name (e.g. ocr=true)")
        try:
            parsed = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            parsed = value
        overrides[key.strip()] = parsed if isinstance(parsed, (str, bool, int, float)) else value
    return overrides


def override_suffix(overrides: dict) -> str:
    """The name suffix a variant with ``overrides`` gets: ``_KEY`` for KEY=true, ``_no_KEY`` for
    KEY=false, ``_KEY-VALUE`` otherwise (characters outside [A-Za-z0-9.-] as ``-``)."""
    parts = []
    for key, value in overrides.items():
        if value is True:
            parts.append(key)
        elif value is False:
            parts.append(f"no_{key}")
        else:
            parts.append(f"{key}-" + re.sub(r"[^A-Za-z0-9.-]+", "-", str(value)).strip("-"))
    return "".join(f"_{p}" for p in parts)


def specific_kwargs_with(original: Path, overrides: dict) -> dict:
    """The original task's ``lmms_eval_specific_kwargs`` with ``overrides`` set in its ``default``
    entry. A key the default does not hold is refused: the task's prompt does not read it, so
    setting it would change nothing."""
    from lmms_eval.utils import load_yaml_config
    kwargs = load_yaml_config(yaml_path=str(original), mode="full").get("lmms_eval_specific_kwargs") or {}
    default = kwargs.get("default")
    if not isinstance(default, dict):
        raise ValueError(f"{original}: the task has no lmms_eval_specific_kwargs.default to override "
                         f"(it has {sorted(kwargs) or 'no lmms_eval_specific_kwargs'})")
    unknown = [key for key in overrides if key not in default]
    if unknown:
        raise ValueError(f"{original}: lmms_eval_specific_kwargs.default has no {', '.join(unknown)} "
                         f"(it has {', '.join(default)}); the task's prompt does not read it")
    return {**kwargs, "default": {**default, **overrides}}


def write_costed(original: str | os.PathLike, costed: str, out: str | os.PathLike, source: str | None = None,
                 overrides: dict | None = None) -> str:
    """Write the costed variant ``costed`` of the task YAML ``original`` into ``out``: a
    YAML including the original, and the Python file its three overrides come from; with
    ``overrides``, its ``lmms_eval_specific_kwargs.default`` changed by them."""
    original, out = Path(original).resolve(), Path(out)
    CostedTask(original, costed)  # fails here, at generation, on a task it cannot wrap
    module = costed.replace("-", "_")
    what = "with per-sample costs" + (" and " + ", ".join(f"{k}={yaml.safe_dump(v).splitlines()[0]}"
                                                          for k, v in overrides.items()) if overrides else "")
    (out / f"{module}.py").write_text(
        f'"""Generated by `collab-eval costed-tasks`: {source or original.name} {what}."""\n'
        "from collab_eval.costed_tasks import CostedTask\n\n"
        f"task = CostedTask({str(original)!r}, name={costed!r})\n"
        "process_docs, process_results, metric_list = task.process_docs, task.process_results, task.metric_list\n")
    prompt = ""
    if overrides:
        prompt = ("# The original's prompt settings, with --set applied to their default entry:\n"
                  + yaml.safe_dump({"lmms_eval_specific_kwargs": specific_kwargs_with(original, overrides)},
                                   sort_keys=False, allow_unicode=True))
    (out / f"{module}.yaml").write_text(
        f"# Generated by `collab-eval costed-tasks`: {source or original.name} ({original}) {what}.\n"
        f"include: {original}\n"
        f"task: {costed}\n"
        "tag: []\n"
        f"process_docs: !function {module}.process_docs\n"
        f"process_results: !function {module}.process_results\n"
        f"metric_list: !function {module}.metric_list\n" + prompt)
    return costed


def costed_name(task: str, overrides: dict | None = None, prefix: str = "collab_") -> str:
    """The name ``costed-tasks`` gives the costed variant of ``task``: ``collab_textvqa_val_ocr``."""
    return prefix + task + override_suffix(overrides or {})


def write_costed_tasks(names: list[str], out: str | os.PathLike, include_path: str | None = None,
                       prefix: str = "collab_", overrides: dict | None = None) -> list[str]:
    """Write a costed variant ``<prefix><task>`` (YAML + Python file) for every task that
    ``names`` stand for, and a group ``<prefix><name>`` for every group or tag among them;
    with ``overrides`` (prompt settings, see the module's doc), each name ends with their suffix.
    Returns the costed task and group names written."""
    from lmms_eval.tasks import TaskManager
    manager = TaskManager(include_path=include_path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        tasks = leaf_tasks(manager, name)
        for task in tasks:
            written.append(write_costed(manager.task_index[task]["yaml_path"], costed_name(task, overrides, prefix),
                                        out, source=task, overrides=overrides))
        if tasks != [name]:
            group = costed_name(name, overrides, prefix)
            (out / f"{group}.yaml").write_text(
                f"# Generated by `collab-eval costed-tasks`: the costed tasks of {name}.\n"
                f"group: {group}\ntask:\n" + "".join(f"  - {costed_name(t, overrides, prefix)}\n" for t in tasks))
            written.append(group)
    return written
