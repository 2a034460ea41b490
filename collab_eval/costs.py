"""Hand-off of per-sample costs from the model adapter to the task's process_results.

lmms-eval passes only the answer text to ``process_results``; the adapter remembers each
sample's costs here, in the same process, keyed by the document's identity.
"""
from __future__ import annotations

COST_METRICS = ("bytes_total", "flops_total", "retransmitted")
_costs: dict[tuple, dict[str, float]] = {}


def doc_key(doc: dict) -> tuple:
    return (str(doc.get("question_id")), str(doc.get("question")))


def remember(doc: dict, record) -> None:
    _costs[doc_key(doc)] = {
        "bytes_total": record.bytes_total,
        "flops_total": record.flops_total,
        "retransmitted": float(record.retransmitted),
    }


def lookup(doc: dict) -> dict[str, float]:
    """Costs of the sample; NaN when the model that answered was not a collab adapter."""
    return _costs.get(doc_key(doc), dict.fromkeys(COST_METRICS, float("nan")))
