"""Per-sample costs from the model adapter to lmms-eval's results.

Two ways out, both keyed by the sample's (task, split, doc id):

- to a costed task's ``process_results`` (collab_eval.costed_tasks): lmms-eval scores a
  document in the process that answered it (each rank post-processes its own shard, in a
  thread pool), so the adapter leaves each sample's costs here and the costed task's
  ``process_docs`` stamps every document with its key (``KEY_COLUMN``), the one thing
  ``process_results`` can read;
- for any task, costed or not: at the end of generation the ranks pool their samples and
  rank 0 logs each task's cost means through lmms-eval's ``log_metrics``, which lands in
  results.json's ``throughput`` block (``cost_means`` reads them back).
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass

COST_METRICS = ("bytes_total", "flops_total", "retransmitted")
KEY_COLUMN = "collab_sample_key"
# results.json["throughput"] key of a task's cost mean: lmms-eval's summary prefixes "avg_".
_THROUGHPUT_PREFIX = "collab_costs"


def sample_key(task: str, split: str, doc_id: int) -> str:
    return f"{task}/{split}/{int(doc_id)}"


@dataclass(frozen=True)
class SampleCosts:
    task: str
    bytes_total: float
    flops_total: float
    retransmitted: float

    @classmethod
    def of(cls, task: str, sample) -> "SampleCosts":
        """``sample``: anything with the record's cost fields (a record, or a resumed answer)."""
        return cls(task, float(sample.bytes_total), float(sample.flops_total), float(sample.retransmitted))

    def metrics(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in COST_METRICS}


_costs: dict[str, SampleCosts] = {}
_lock = threading.Lock()


def remember(key: str, costs: SampleCosts) -> None:
    with _lock:
        _costs[key] = costs


def lookup(doc: dict) -> dict[str, float]:
    """Costs of the sample ``doc`` is (by its stamped key); NaN when no collab adapter
    answered it in this process (another model ran the costed task, or a stored document
    is rescored after the run, as the report does)."""
    with _lock:
        costs = _costs.get(doc.get(KEY_COLUMN))
    return costs.metrics() if costs else dict.fromkeys(COST_METRICS, math.nan)


def task_means(costs: dict[str, SampleCosts]) -> dict[str, dict[str, float]]:
    """Per task: the number of samples and the mean of each cost metric."""
    by_task: dict[str, list[SampleCosts]] = {}
    for sample in costs.values():
        by_task.setdefault(sample.task, []).append(sample)
    return {task: {"samples": len(samples),
                   **{name: sum(getattr(s, name) for s in samples) / len(samples) for name in COST_METRICS}}
            for task, samples in by_task.items()}


def publish(keys: list[str], world_size: int, rank: int, elapsed: float, generated_tokens: int) -> dict:
    """Pool the costs of the samples this generation call answered (``keys``) over all ranks
    and, on rank 0, log each task's means into results.json and as a table. Every rank
    must call this (it is a collective when ``world_size > 1``). A key answered twice (the
    padding lmms-eval adds to even out ranks) counts once. Returns the per-task means."""
    with _lock:
        mine = {key: _costs[key] for key in keys if key in _costs}
    pooled = dict(mine)
    if world_size > 1:
        import torch.distributed as dist
        gathered = [None] * world_size
        dist.all_gather_object(gathered, mine)
        pooled = {key: costs for part in gathered for key, costs in part.items()}
    means = task_means(pooled)
    if rank == 0 and means:
        from lmms_eval.models.model_utils.gen_metrics import log_metrics
        log_metrics(total_elapsed_time=elapsed, total_gen_tokens=int(generated_tokens),
                    avg_speed=generated_tokens / elapsed if elapsed > 0 else 0.0,
                    additional_metrics={f"{_THROUGHPUT_PREFIX}/{task}/{name}": value
                                        for task, row in means.items() for name, value in row.items()})
        from loguru import logger
        logger.info("collab costs per task (means per sample):\n" + cost_table(means))
    return means


def cost_means(results: dict) -> dict[str, dict[str, float]]:
    """Per-task cost means as a run's results.json holds them (``publish``'s place)."""
    prefix = f"avg_{_THROUGHPUT_PREFIX}/"
    means: dict[str, dict[str, float]] = {}
    for key, value in (results.get("throughput") or {}).items():
        if key.startswith(prefix):
            task, name = key[len(prefix):].rsplit("/", 1)
            means.setdefault(task, {})[name] = value
    return means


def cost_table(means: dict[str, dict[str, float]]) -> str:
    rows = [("task", "samples", "bytes_total", "GFLOPs_total", "retransmitted")]
    rows += [(task, f"{row['samples']:.0f}", f"{row['bytes_total']:.0f}", f"{row['flops_total'] / 1e9:.3f}",
              f"{row['retransmitted']:.3f}") for task, row in sorted(means.items())]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows)
