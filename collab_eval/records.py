"""Per-sample records: everything needed to redraw the cost/accuracy trade-off later."""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FLOP_PARTS = ("vision", "projector", "prefill", "decode", "generic", "stage2")
STAGE1_PARTS = ("vision", "projector", "prefill", "decode")


@dataclass
class SampleRecord:
    task: str
    doc_id: int
    question: str  # the prompt text lmms-eval built for the sample
    model: str
    codec: str
    policy: str
    policy_args: dict = field(default_factory=dict)  # threshold, rate, seed as the run was started
    rank: int = 0  # the process that answered
    answer_stage1: str | None = None
    answer_stage2: str | None = None  # null when stage 2 did not run
    answer: str = ""  # what lmms-eval scores
    retransmitted: bool = False
    score: float | None = None  # the aggregated min-entropy the gate used
    score_name: str = "max"
    scores: dict[str, float] = field(default_factory=dict)  # max / mean / first
    min_entropy: list[float] = field(default_factory=list)  # per stage-1 token, nats
    shannon_entropy: list[float] = field(default_factory=list)  # per stage-1 token, nats
    roi: list[int] | None = None  # [x0, y0, x1, y1] in original pixels
    global_region: list[float] | None = None  # part of the original the global image shows
    image_size: list[int] | None = None  # original (width, height)
    bytes_original: int = 0  # the original with the same codec: a plain cloud deployment
    bytes_global: int = 0
    bytes_request: int = 0
    bytes_local: int = 0
    bytes_total: int = 0
    flops: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FLOP_PARTS, 0))
    flops_total: int = 0
    image_key: str | None = None  # hash of the global image as received: the generic-map cache key
    generic_cached: bool = False  # the generic map came from this task's cache (its FLOPs were paid before)
    seconds: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    doc: dict = field(default_factory=dict)  # the task document without media: ground truth for rescoring

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=_jsonable, allow_nan=False)


def _jsonable(value: Any):
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def finite(x: float) -> float | None:
    """JSON has no infinity: an empty answer's score is stored as null."""
    return x if x is not None and math.isfinite(x) else None


class RecordWriter:
    """One JSON-lines file per process, each record flushed to disk as it is written,
    so a crash loses no finished sample."""

    def __init__(self, directory: str | os.PathLike, run_name: str, rank: int):
        self.path = Path(directory) / f"{run_name}.rank{rank}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, record: SampleRecord) -> None:
        self._file.write(record.to_json() + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def read_records(paths) -> list[dict]:
    records = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            records.extend(json.loads(line) for line in f if line.strip())
    return records
