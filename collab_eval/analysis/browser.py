"""The report's sample browser: each run's samples per task, sorted into what stage 2 did to them.

For every run and task (a run of any policy), each sample falls in exactly one category:

- ``failed``: the record has an ``error`` (whatever it got to before failing);
- ``not_retransmitted``: the gate kept the stage-1 answer;
- ``fixed``: retransmitted, and the stage-2 answer scores higher than the stage-1 answer;
- ``broken``: retransmitted, and it scores lower;
- ``unchanged``: retransmitted, and it scores the same (the text may still differ).

Scores are the task's own per-sample accuracy (``collab_eval.analysis.scoring``), the same as the
curves'. Pictures (``sample_images``) are made for the first ``images_per_category`` samples of
each category (in doc_id order); every sample's text, answers, scores and box are in the page.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from collab_eval.analysis.sample_images import Pictures, SampleImages
from collab_eval.records import SampleRecord

CATEGORIES = ("fixed", "broken", "unchanged", "not_retransmitted", "failed")
LABELS = {"fixed": "fixed by stage 2", "broken": "broken by stage 2", "unchanged": "retransmitted without change",
          "not_retransmitted": "not retransmitted", "failed": "failed"}
IMAGES_PER_CATEGORY = 12


def category(record: SampleRecord, acc1: float | None, acc2: float | None) -> str:
    if record.error:
        return "failed"
    if not record.retransmitted or record.answer_stage2 is None:
        return "not_retransmitted"
    if acc2 > acc1:
        return "fixed"
    return "broken" if acc2 < acc1 else "unchanged"


@dataclass
class BrowserSample:
    doc_id: int
    category: str
    question: str
    target: str
    answer1: str | None
    answer2: str | None
    acc1: float | None
    acc2: float | None
    score: float | None  # the gate's score (None: +inf, an empty answer)
    retransmitted: bool
    roi: list[int] | None
    roi_image: int | None
    image_size: list[int] | None
    doc_boxes: dict[str, list[float]]  # the document's own boxes (e.g. where the detail is), original pixels
    bytes_total: int
    flops_total: int
    error: str | None
    images: SampleImages | None = None


@dataclass
class BrowserRun:
    """One run's samples of one task, as the browser shows them."""
    task: str
    system: str  # the system's label in the report
    run: str  # the run's name
    policy: str  # the run's label (``threshold τ=0.5 (max)``)
    samples: list[BrowserSample]
    counts: dict[str, int] = field(default_factory=dict)
    images_per_category: int = IMAGES_PER_CATEGORY

    @property
    def key(self) -> str:
        return f"{self.task}|{self.system}|{self.run}"


def target_text(doc: dict) -> str:
    """The ground truth as a reader wants it: the answers by frequency, or the answer field."""
    from collab_eval.analysis.report import ground_truth  # the report's own wording

    return ground_truth(doc)


def doc_boxes(doc: dict) -> dict[str, list[float]]:
    """Document fields named ``*box`` holding four numbers (x0, y0, x1, y1): drawn beside the RoI."""
    return {k: [float(v) for v in value] for k, value in doc.items()
            if k.endswith("box") and isinstance(value, list) and len(value) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)}


def browser_run(task: str, system: str, run: str, policy: str, records: list[SampleRecord], acc1: list, acc2: list,
                pictures: Pictures | None, images_per_category: int = IMAGES_PER_CATEGORY) -> BrowserRun:
    samples = []
    for r, a1, a2 in sorted(zip(records, acc1, acc2), key=lambda item: item[0].doc_id):
        samples.append(BrowserSample(
            doc_id=r.doc_id, category=category(r, a1, a2), question=str(r.doc.get("question", r.question)),
            target=target_text(r.doc), answer1=r.answer_stage1, answer2=r.answer_stage2, acc1=number(a1),
            acc2=number(a2) if r.answer_stage2 is not None else None, score=r.score, retransmitted=r.retransmitted,
            roi=r.roi, roi_image=r.roi_image, image_size=r.image_size, doc_boxes=doc_boxes(r.doc),
            bytes_total=r.bytes_total, flops_total=r.flops_total, error=r.error))
    counts = Counter(s.category for s in samples)
    out = BrowserRun(task, system, run, policy, samples, {c: counts.get(c, 0) for c in CATEGORIES},
                     images_per_category)
    if pictures is not None:
        shown = Counter()
        by_id = {r.doc_id: r for r in records}
        for s in samples:
            if shown[s.category] < images_per_category:
                shown[s.category] += 1
                s.images = pictures.of(by_id[s.doc_id])
    return out


def number(x) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def browser_runs(summary, labels: dict[str, str], pictures: Pictures | None,
                 images_per_category: int = IMAGES_PER_CATEGORY) -> list[BrowserRun]:
    """Every run the summary read, per task: always runs with the accuracies the curves used
    (their TaskViews), other runs rescored with the summary's scorer."""
    by_first = {id(v.records[0]): v for v in summary.views if v.records}  # an always run's task: its view
    out = []
    for row in summary.runs:
        run = next((r for r in summary.read_runs if r.name == row.name), None)
        if run is None:
            continue
        by_task: dict[str, list[SampleRecord]] = {}
        for record in run.records:
            by_task.setdefault(record.task, []).append(record)
        for task, records in sorted(by_task.items()):
            view = by_first.get(id(records[0]))
            if view is not None and len(view.records) == len(records):
                acc1, acc2 = view.acc1.tolist(), view.acc2.tolist()
            else:
                try:
                    metric = summary.scorer.metric(task)
                    acc1 = [metric.accuracy(r.doc, r.answer_stage1) for r in records]
                    acc2 = [metric.accuracy(r.doc, r.answer_stage2) if r.answer_stage2 is not None else None
                            for r in records]
                except Exception:  # noqa: BLE001  -- an unscored task: its section says why; no browser
                    continue
            out.append(browser_run(task, labels.get(row.system, row.system), row.name, row.label, records, acc1, acc2,
                                   pictures, images_per_category))
    return out
