"""Calling a task's own lmms-eval functions as lmms-eval 0.7.3 calls them, and telling which
tasks cannot be rescored per sample here.

- An aggregation function whose signature has a parameter named ``args`` gets lmms-eval's
  arguments as ``args=`` (lmms-eval's ``TaskOutput.calculate_aggregate_metric``: ``agg_fn(items,
  args=task.args)``, where ``task.args`` is the CLI's argparse namespace); any other gets the
  items alone. What such a function does with ``args`` is write files under ``args.output_path``
  (submissions, logs): here that is a scratch directory of this process, removed at exit, so
  rescoring never writes into a user's run or the current directory.
- A task whose metric needs an external judge (a GPT model through an API) is not rescored: a
  report must not call out to a paid service, and offline it cannot. A judge is recognised by
  the task's metadata naming a judge model (``gpt_eval_model_name``, ``eval_model_name``,
  ``use_lmms_judge``) or by its scoring functions (process_results and the aggregations, and the
  module functions they call, two levels deep) naming a judge client (``openai``,
  ``evaluate_by_chatgpt``, ``get_chat_response``, ``llm_judge``, ...).
"""
from __future__ import annotations

import argparse
import atexit
import functools
import inspect
import re
import shutil
import tempfile
import types

JUDGE_METADATA = ("gpt_eval_model_name", "eval_model_name", "use_lmms_judge")
JUDGE_NAMES = re.compile(r"openai|chatgpt|llm_judge|get_chat_response|gpt_eval|judge_client|get_judge|"
                         r"API_KEY|azure_endpoint", re.IGNORECASE)


class Unscorable(ValueError):
    """A task whose answers cannot be scored one sample at a time here; the message says why."""


@functools.lru_cache(maxsize=1)
def lmms_args() -> argparse.Namespace:
    """The ``args`` an aggregation function gets: lmms-eval's CLI namespace, its output_path a scratch directory."""
    scratch = tempfile.mkdtemp(prefix="collab-eval-scoring-")
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    return argparse.Namespace(output_path=scratch, log_samples=False, verbosity="WARNING")


def aggregate(fn, items: list):
    """``fn(items)`` as lmms-eval calls an aggregation: with ``args=`` when it takes them."""
    try:
        takes_args = "args" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        takes_args = False
    return fn(items, args=lmms_args()) if takes_args else fn(items)


def judge_reason(task: str, config: dict) -> str | None:
    """Why the task needs an external judge, or None."""
    metadata = config.get("metadata")
    entries = metadata if isinstance(metadata, list) else [metadata]
    for entry in entries:
        if isinstance(entry, dict):
            named = [key for key in JUDGE_METADATA if entry.get(key)]
            if named:
                return (f"task {task!r} needs an external judge model (metadata {named[0]}: {entry[named[0]]!r}); "
                        "its answers are not rescored here")
    functions = [config.get("process_results")] + [m.get("aggregation") for m in config.get("metric_list") or []
                                                   if isinstance(m, dict)]
    for fn in functions:
        if callable(fn):
            found = judge_name(fn)
            if found:
                return (f"task {task!r} needs an external judge: its scoring function {fn.__name__} refers to "
                        f"{found!r}; its answers are not rescored here")
    return None


def judge_name(fn, depth: int = 2, seen=None) -> str | None:
    """A judge client's name among what ``fn`` refers to (and, ``depth`` levels down, the module
    functions it calls), or None."""
    seen = seen if seen is not None else set()
    code = getattr(fn, "__code__", None)
    if code is None or code in seen:
        return None
    seen.add(code)
    names = set(code.co_names) | {c.co_name for c in code.co_consts if isinstance(c, types.CodeType)} \
        | {c for c in code.co_consts if isinstance(c, str) and len(c) < 40}  # eval_method="openai"
    for name in sorted(names):
        if JUDGE_NAMES.search(name):
            return name
    if depth > 0:
        for name in sorted(code.co_names):
            callee = getattr(fn, "__globals__", {}).get(name)
            if isinstance(callee, types.FunctionType):
                found = judge_name(callee, depth - 1, seen)
                if found:
                    return found
            elif callee is not None and not isinstance(callee, (types.ModuleType, type)) and \
                    JUDGE_NAMES.search(type(callee).__name__ + " " + type(callee).__module__):
                return type(callee).__name__
    return None
