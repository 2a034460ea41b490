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
class Outcome:
    """What the pipeline produced for one sample; the record adds who asked and how."""
    answer: str = ""  # what lmms-eval scores
    answer_stage1: str | None = None
    answer_stage2: str | None = None  # null when stage 2 did not run
    retransmitted: bool = False
    score: float | None = None  # the aggregated min-entropy the gate used (null: empty answer)
    scores: dict[str, float | None] = field(default_factory=dict)  # every aggregation
    min_entropy: list[float] = field(default_factory=list)
    shannon_entropy: list[float] = field(default_factory=list)
    roi: list[int] | None = None
    roi_image: int | None = None  # which of the document's images the RoI was cropped from (0-based)
    global_region: list[float] | None = None  # of the RoI's image (the first image without a RoI)
    image_size: list[int] | None = None  # of the RoI's image (the first image without a RoI)
    image_sizes: list[list[int]] = field(default_factory=list)  # every image the task gave, in order
    bytes_original: int = 0
    bytes_global: int = 0  # every global image together
    bytes_global_images: list[int] = field(default_factory=list)  # each global image's payload
    bytes_request: int = 0
    bytes_local: int = 0
    bytes_total: int = 0
    flops: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FLOP_PARTS, 0))
    flops_total: int = 0
    image_key: str | None = None  # of the RoI's image (the first image without a RoI)
    generic_cached: bool = False
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass(kw_only=True)
class SampleRecord(Outcome):
    """One sample as written to the records file: who asked and how, and the outcome."""
    task: str
    doc_id: int
    question: str  # the prompt text lmms-eval built for the sample
    model: str
    codec: str
    policy: str
    policy_args: dict = field(default_factory=dict)  # threshold, rate, seed as the run was started
    rank: int = 0  # the process that answered
    score_name: str = "max"  # the aggregation behind ``score``
    error: str | None = None
    doc: dict = field(default_factory=dict)  # the task document without media: ground truth for rescoring

    def to_json(self) -> str:
        data = asdict(self)
        header = {name: data[name] for name in HEADER_FIELDS}  # who asked first, for a reader's eye
        return json.dumps({**header, **data}, default=_jsonable, allow_nan=False)


HEADER_FIELDS = ("task", "doc_id", "question", "model", "codec", "policy", "policy_args", "rank")


def _jsonable(value: Any):
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def strip_media(value: Any) -> Any:
    """``value`` without media at any depth: images, raw bytes, encoded-media dicts
    (``{"bytes", "path"}``) and audio dicts (``{"array", ...}``) go; lists and dicts keep
    everything else. A record holds ground truth, never pixels."""
    if isinstance(value, dict):
        if ("bytes" in value and "path" in value) or "array" in value:
            return None
        return {k: v for k, v in ((k, strip_media(v)) for k, v in value.items()) if v is not None or value[k] is None}
    if isinstance(value, (list, tuple)):
        items = [strip_media(v) for v in value]
        return [v for v, original in zip(items, value) if v is not None or original is None]
    if isinstance(value, (bytes, bytearray, memoryview)) or _is_media(value):
        return None
    return value


def _is_media(value: Any) -> bool:
    from PIL import Image
    return isinstance(value, Image.Image) or (hasattr(value, "ndim") and getattr(value, "ndim", 0) >= 2)


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


def read_records(paths) -> list[dict]:
    records = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            records.extend(json.loads(line) for line in f if line.strip())
    return records
