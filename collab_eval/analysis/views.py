"""From one task's records to per-sample arrays: each answer scored by the task's own metric,
each sample's costs when retransmitted or not, its gate scores, its cache group. What the
curves, the calibration and the report's histograms and examples are computed from."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from statistics import median

import numpy as np

from collab_eval.analysis.curves import Samples
from collab_eval.analysis.scoring import Scorer
from collab_eval.records import STAGE1_PARTS, SampleRecord
from collab_eval.systems import system_settings

IMAGE_KEYS = ("image_id", "image_source", "image_path", "image_file")  # doc fields naming the image


@dataclass
class TaskView:
    """What the report needs beyond the summary: per-sample data for histograms and examples."""
    system: str
    task: str
    samples: Samples
    scores: dict[str, np.ndarray]  # score name -> per-sample score (+inf for null)
    records: list[SampleRecord]
    acc1: np.ndarray
    acc2: np.ndarray


def system_of(records: list[SampleRecord]) -> tuple[str, str]:
    """(checkpoint, codec) of the records' first sample: the checkpoint's directory name."""
    first = records[0]
    return Path(first.model.rstrip("/")).name, first.codec


def settings_of(records: list[SampleRecord]) -> dict:
    """The system settings of the records' first sample (defaults for what it does not hold)."""
    first = records[0]
    return system_settings(first.settings, first.codec)


def task_view(system: str, task: str, records: list[SampleRecord], scorer: Scorer) -> TaskView:
    metric = scorer.metric(task)
    # A failed sample is scored as wrong at both stages, as lmms-eval scored it (its answer is ""),
    # whatever stage-1 answer it got before failing; it keeps the costs it incurred.
    acc1 = np.array([scored(metric, r, r.answer_stage1) for r in records])
    acc2 = np.array([scored(metric, r, r.answer_stage2) for r in records])
    group, generic = cache_groups(records)
    samples = Samples.build(
        acc1, acc2, [r.score for r in records],
        bytes1=[r.bytes_global for r in records], bytes2=[r.bytes_total for r in records],
        flops1=[sum(r.flops.get(p, 0) for p in STAGE1_PARTS) for r in records],
        flops2=[r.flops_total - r.flops.get("generic", 0) for r in records],
        group=group, generic=generic, keys=[f"{r.task}/{r.doc_id}" for r in records])
    scores = {name: np.array([inf_if_none(r.scores.get(name)) for r in records]) for name in score_names(records)}
    return TaskView(system, task, samples, scores, records, acc1, acc2)


def scored(metric, r: SampleRecord, answer: str | None) -> float:
    """The accuracy of ``answer`` for record ``r``: 0 for a failed sample (scored with no answer,
    so the metric is still the document's own)."""
    value = metric.accuracy(r.doc, None if r.error else answer)
    return 0.0 if r.error else value


def score_names(records: list[SampleRecord]) -> list[str]:
    """The scores every answered sample holds (the installed scores of the run), in recorded order."""
    answered = [r for r in records if not r.error]
    names = list(dict.fromkeys(name for r in answered for name in r.scores))
    return [name for name in names if all(name in r.scores for r in answered)]


def inf_if_none(value) -> float:
    return math.inf if value is None else float(value)


def image_name(r: SampleRecord) -> str | None:
    """The document's own name for its image (image_id, image_source, ...), if it has one."""
    return next((str(r.doc[k]) for k in IMAGE_KEYS if r.doc.get(k) not in (None, "")), None)


def cache_groups(records: list[SampleRecord]) -> tuple[list[int], list[int]]:
    """The adapter caches the generic-prompt pass per image within a task and process: group
    the samples by (rank, image) and give each group the FLOPs of its one uncached pass. An
    image is the record's ``image_key`` (the cache's own key); records written before it
    existed fall back to the document (image_id, image_source, ...) or the sample itself, and
    a group whose pass was paid outside this task (all cached) gets the median pass of the task."""
    ids: dict[tuple, int] = {}
    group = []
    for r in records:
        name = r.image_key or image_name(r) or f"{r.task}/{r.doc_id}"
        group.append(ids.setdefault((r.rank, name, tuple(r.image_size or ())), len(ids)))
    generic = [0] * len(ids)
    cached = [True] * len(ids)
    for g, r in zip(group, records):
        generic[g] = max(generic[g], int(r.flops.get("generic", 0)))
        cached[g] = cached[g] and r.generic_cached
    paid = [f for f in generic if f > 0]
    for g in range(len(ids)):
        if generic[g] == 0 and cached[g] and paid:
            generic[g] = int(median(paid))
    return group, generic
