"""Hand-off of per-sample costs from the model adapter to the task's process_results.

lmms-eval passes only the document and the answer text to ``process_results``; the
adapter remembers each sample's costs here, in the same process, keyed by task and
document. The task is read from the name lmms-eval sets before each task's
postprocessing (its usage-attribution context), so two tasks over the same documents
(TextVQA with and without OCR tokens, say) keep their costs apart.
"""
from __future__ import annotations

import json

from lmms_eval.models.model_utils import usage_metrics

COST_METRICS = ("bytes_total", "flops_total", "retransmitted")
_costs: dict[tuple[str, str], dict[str, float]] = {}


def doc_key(doc: dict) -> str:
    return json.dumps({k: doc.get(k) for k in ("question_id", "question")}, sort_keys=True, default=str)


def remember(task: str, doc: dict, record) -> None:
    _costs[(task, doc_key(doc))] = {
        "bytes_total": record.bytes_total,
        "flops_total": record.flops_total,
        "retransmitted": float(record.retransmitted),
    }


def lookup(doc: dict) -> dict[str, float]:
    """Costs of the sample being scored; NaN when no collab adapter answered it."""
    task = getattr(usage_metrics, "_CURRENT_TASK_CONTEXT", None)
    key = doc_key(doc)
    if (task, key) in _costs:
        return _costs[(task, key)]
    candidates = [v for (_, k), v in _costs.items() if k == key]
    if len(candidates) == 1:  # lmms-eval did not say which task: fine while unambiguous
        return candidates[0]
    return dict.fromkeys(COST_METRICS, float("nan"))
