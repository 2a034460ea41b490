"""Per-sample records: everything needed to redraw the cost/accuracy trade-off later."""
from __future__ import annotations

import json
import math
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import UnidentifiedImageError
from pydantic import BaseModel, Field, ValidationError

from collab_eval.edge import BadImage
from collab_eval.typed_json import problem

FLOP_PARTS = ("vision", "projector", "prefill", "decode", "generic", "locate", "stage2")
STAGE1_PARTS = ("vision", "projector", "prefill", "decode")


class Outcome(BaseModel):
    """What the pipeline produced for one sample; the record adds who asked and how.
    Constructed with no arguments and filled in field by field (assignments are not
    validated); ``dict(outcome)`` gives its fields by name, ``outcome.model_dump()`` a copy."""
    answer: str = ""  # what lmms-eval scores
    answer_stage1: str | None = None
    answer_stage2: str | None = None  # null when stage 2 did not run
    retransmitted: bool = False
    score: float | None = None  # the score the gate used (null: empty answer)
    scores: dict[str, float | None] = Field(default_factory=dict)  # every installed score (null: +inf)
    min_entropy: list[float] = Field(default_factory=list)
    shannon_entropy: list[float] = Field(default_factory=list)
    roi: list[int] | None = None
    # The box a box locator returned when it reached past its image and ``roi`` is it clipped to
    # the image (null: not clipped). Absent from records written before it existed.
    roi_clipped_from: list[float] | None = None
    roi_image: int | None = None  # which of the document's images the RoI was cropped from (0-based)
    global_region: list[float] | None = None  # of the RoI's image (the first image without a RoI)
    image_size: list[int] | None = None  # of the RoI's image (the first image without a RoI)
    image_sizes: list[list[int]] = Field(default_factory=list)  # every image the task gave, in order
    bytes_original: int = 0
    bytes_global: int = 0  # every global image together
    bytes_global_images: list[int] = Field(default_factory=list)  # each global image's payload
    bytes_request: int = 0
    bytes_local: int = 0
    bytes_tiles: int = 0  # tiles of the original a highres locator asked the edge for
    bytes_total: int = 0
    flops: dict[str, int] = Field(default_factory=lambda: dict.fromkeys(FLOP_PARTS, 0))
    flops_total: int = 0
    image_key: str | None = None  # of the RoI's image (the first image without a RoI)
    generic_cached: bool = False
    seconds: dict[str, float] = Field(default_factory=dict)
    # How each image crossed the link, so a report can re-apply the edge to the task's own document
    # and show exactly what the server received (checked against ``image_key``); absent in older records.
    global_sizes: list[list[int]] | None = None  # each global image's (w, h) as resampled by the edge
    local_regions: list[list[float]] | None = None  # each crop's framing: the part of its original it shows
    local_sizes: list[list[int]] | None = None  # each crop's (w, h) as sent
    # The locator's map (rows x cols, its own grid resolution) over ``roi_map_region`` of image
    # ``roi_image``: recorded only with record_map=true.
    roi_map: list[list[float]] | None = None
    roi_map_region: list[float] | None = None


class SampleRecord(Outcome):
    """One sample as written to the records file: who asked and how, and the outcome."""
    run_id: str = ""  # the run (all ranks, all resumed sessions) this record belongs to
    task: str
    doc_id: int
    question: str  # the prompt text lmms-eval built for the sample
    model: str
    codec: str
    policy: str
    policy_args: dict = Field(default_factory=dict)  # threshold, rate, seed as the run was started
    rank: int = 0  # the process that answered
    score_name: str = "max"  # the aggregation behind ``score``
    # Every model arg that changes answers or costs, as the run was started (collab_eval.systems).
    settings: dict[str, str | int | float | bool | None] = Field(default_factory=dict)
    error: str | None = None
    # The step a failed sample failed in (read, edge_global, stage1, gate, locate, edge_local,
    # stage2, record); null for a sample that did not fail. Its costs are what it sent and
    # computed up to that step.
    failed_step: str | None = None
    doc: dict = Field(default_factory=dict)  # the task document without media: ground truth for rescoring

    def to_json(self) -> str:
        """The record's line: the header first (who asked, for a reader's eye), then every field
        in declaration order; numpy scalars in the document as numbers."""
        data = self.model_dump(warnings=False)
        # threshold=inf / -inf are valid settings (never / always); JSON has no infinity.
        data["policy_args"] = {k: json_number(v) for k, v in data["policy_args"].items()}
        header = {name: data[name] for name in HEADER_FIELDS}
        return json.dumps({**header, **data}, default=_jsonable, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict) -> "SampleRecord":
        """A record read back from a records file (fields unknown to this version ignored)."""
        return cls.model_validate(data)


HEADER_FIELDS = ("run_id", "task", "doc_id", "question", "model", "codec", "policy", "policy_args", "rank")
OUTCOME_FIELDS = frozenset(Outcome.model_fields)


def json_number(x):
    """A float as JSON can hold it: infinities as the strings "inf" / "-inf" (float() reads them back)."""
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


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


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def failure_reason(err: BaseException) -> str:
    """A failed sample's ``error``: plain and the same from run to run (no object addresses).
    The edge's BadImage already says what is wrong with the image in words."""
    text = _ADDRESS.sub("", str(err))
    if isinstance(err, UnidentifiedImageError):
        return f"not an image: {text}"
    return text if isinstance(err, BadImage) else f"{type(err).__name__}: {text}"


def record_path(directory: str | os.PathLike, run_id: str, rank: int) -> Path:
    return Path(directory) / f"{run_id}.rank{rank}.jsonl"


class RecordWriteError(RuntimeError):
    """Records cannot be written (disk full, file system gone): the run must stop."""


class RecordWriter:
    """One JSON-lines file per process, each record in the file before the next sample starts,
    so a crash loses no finished sample. Appends: a resumed run continues its files.

    ``write`` hands the record to the kernel (``os.write``) on the caller's thread: from then on
    it survives any end of the process (an exception, an out-of-memory kill, SIGKILL). ``fsync``,
    which guards against the machine itself going down, runs on a thread of its own, so the
    server's thread never waits for the disk; ``sync`` waits until every record written is on
    disk. A failed ``fsync`` is raised (as RecordWriteError) by the next ``write`` or ``sync``."""

    def __init__(self, directory: str | os.PathLike, run_id: str, rank: int):
        self.path = record_path(directory, run_id, rank)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._changed = threading.Condition()
        self._written = self._synced = 0  # records handed to the kernel; of those, on disk
        self._sync_error: OSError | None = None
        self._syncer = threading.Thread(target=self._sync_loop, name="collab-records-fsync", daemon=True)
        self._syncer.start()

    def write(self, record: SampleRecord) -> SampleRecord:
        """Write one record and return it as written: a record that cannot be serialised
        (a document value JSON cannot hold) is written as that sample's failure instead.
        An I/O failure removes the partial line and raises RecordWriteError."""
        self._raise_sync_error()
        line, record = serialise(record)
        data = memoryview((line + "\n").encode("utf-8"))
        end = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            while data:
                data = data[os.write(self._fd, data):]
        except OSError as err:
            try:  # leave no partial line behind (truncating frees space, so it works on a full disk)
                os.ftruncate(self._fd, end)
            except OSError:
                pass
            raise self._error(err) from err
        with self._changed:
            self._written += 1
            self._changed.notify_all()
        return record

    def sync(self) -> None:
        """Wait until every record written so far is on disk."""
        with self._changed:
            self._changed.wait_for(lambda: self._synced >= self._written or self._sync_error is not None
                                   or not self._syncer.is_alive())
        self._raise_sync_error()

    def _sync_loop(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._written > self._synced or self._fd is None)
                if self._fd is None:
                    return
                fd, target = self._fd, self._written
            try:
                os.fsync(fd)
            except OSError as err:
                with self._changed:
                    self._sync_error = err
                    self._changed.notify_all()
                return
            with self._changed:
                self._synced = target
                self._changed.notify_all()

    def _raise_sync_error(self) -> None:
        if self._sync_error is not None:
            raise self._error(self._sync_error) from self._sync_error

    def _error(self, err: OSError) -> RecordWriteError:
        return RecordWriteError(
            f"cannot write records to {self.path}: {err.strerror or err}. The run stops here; every "
            "record written before is intact, and the same command with resume=true continues from them.")

    def close(self) -> None:
        """Put every record on disk, then close the file."""
        if self._fd is None:
            return
        try:
            self.sync()
        finally:
            with self._changed:
                fd, self._fd = self._fd, None
                self._changed.notify_all()
            self._syncer.join()
            os.close(fd)


def serialise(record: SampleRecord) -> tuple[str, SampleRecord]:
    """The record's JSON line, or, if some value cannot be written, the line of a failed
    record for the same sample saying which."""
    try:
        return record.to_json(), record
    except (TypeError, ValueError, OverflowError) as err:
        failed = unserialisable(record, err)
        try:
            return failed.to_json(), failed
        except (TypeError, ValueError, OverflowError):
            failed.doc = {}
            return failed.to_json(), failed


def unserialisable(record: SampleRecord, err: Exception) -> SampleRecord:
    doc, dropped = {}, []
    for key, value in record.doc.items():
        try:
            json.dumps({key: value}, default=_jsonable, allow_nan=False)
            doc[key] = value
        except (TypeError, ValueError, OverflowError):
            dropped.append(key)
    what = (f"document field(s) {dropped} hold values JSON cannot represent" if dropped
            else _ADDRESS.sub("", str(err)))
    reason = f"record cannot be written as JSON: {what}"
    # The sample failed at writing its record, after everything it sent and computed: it keeps
    # those costs (bytes, FLOPs, stage-1 answer and scores), its answer is "" (scored as wrong).
    fields = {name: getattr(record, name) for name in SampleRecord.model_fields}
    return SampleRecord(**{**fields, "doc": doc, "answer": "",
                           "error": f"{record.error}; {reason}" if record.error else reason,
                           "failed_step": record.failed_step or "record"})


# ----- reading (report, check, calibrate) ---------------------------------------------------
class RecordError(ValueError):
    """A records file holding something that is not a record; the message names the file and line."""


# What every record has, whatever version wrote it: enough to score and cost a sample.
REQUIRED = ("task", "doc_id", "question", "model", "codec", "policy", "bytes_global", "bytes_total", "flops",
            "flops_total")


@dataclass
class RecordFile:
    path: Path
    records: list[SampleRecord]
    skipped: list[str]  # what was left out and why, each naming the file and line


def read_record_file(path) -> RecordFile:
    """The complete records of one file. What a crash can leave is left out with a note in
    ``skipped``: an empty file, a cut-off last line (no newline after it). Anything else that is
    not a record raises RecordError naming the file and line."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as err:
        raise RecordError(f"{path}: cannot read it ({err.strerror or err})") from None
    except UnicodeDecodeError as err:
        raise RecordError(f"{path}: not a records file (not UTF-8 text at byte {err.start})") from None
    if not text.strip():
        return RecordFile(path, [], [f"{path}: empty (no records), skipped"])
    lines = text.split("\n")
    records, skipped = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        record, problem = parse_record(line)
        if problem and number == len(lines):  # the writer ends every record with a newline: a cut-off line
            skipped.append(f"{path}, line {number}: incomplete last line (the run was cut off while writing it), "
                           "skipped")
        elif problem:
            raise RecordError(f"{path}, line {number}: {problem}")
        else:
            records.append(record)
    return RecordFile(path, records, skipped)


def parse_record(line: str) -> tuple[SampleRecord | None, str | None]:
    """A records-file line as a SampleRecord (strictly: a string is not a number), or what makes it not one."""
    try:
        record = SampleRecord.model_validate_json(line, strict=True)
    except ValidationError as err:
        return None, record_problem(line, err)
    missing = [key for key in REQUIRED if key not in record.model_fields_set]
    if missing:
        return None, f"not a record (no {', '.join(map(repr, missing))})"
    impossible = impossible_value(record)
    return (None, impossible) if impossible else (record, None)


BYTE_FIELDS = ("bytes_original", "bytes_global", "bytes_request", "bytes_local", "bytes_tiles", "bytes_total")
BYTE_PARTS = ("bytes_global", "bytes_request", "bytes_local", "bytes_tiles")


def impossible_value(record: SampleRecord) -> str | None:
    """What makes a well-typed record impossible, naming the field: a negative or non-finite
    number of seconds, bytes or FLOPs, or a total that is not the sum of its parts."""
    def bad(field: str, value) -> str:
        return f"field {field!r} is {value!r}; expected a finite number >= 0"

    for field in BYTE_FIELDS:
        if getattr(record, field) < 0:
            return bad(field, getattr(record, field))
    for i, value in enumerate(record.bytes_global_images):
        if value < 0:
            return bad(f"bytes_global_images[{i}]", value)
    for part, value in record.flops.items():
        if value < 0:
            return bad(f"flops.{part}", value)
    if record.flops_total < 0:
        return bad("flops_total", record.flops_total)
    for step, value in record.seconds.items():
        if not (math.isfinite(value) and value >= 0):
            return bad(f"seconds.{step}", value)
    if set(BYTE_PARTS) <= record.model_fields_set:  # records written before bytes_tiles existed: no check
        parts = sum(getattr(record, field) for field in BYTE_PARTS)
        if record.bytes_total != parts:
            return (f"field 'bytes_total' is {record.bytes_total}, but its parts (bytes_global + bytes_request + "
                    f"bytes_local + bytes_tiles) sum to {parts}")
    if record.flops_total != sum(record.flops.values()):
        return (f"field 'flops_total' is {record.flops_total}, but its parts (flops) sum to "
                f"{sum(record.flops.values())}")
    return None


def record_problem(line: str, err: ValidationError) -> str:
    """Why a line is not a record: not JSON, not an object, keys missing, or the first value of the wrong kind."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError as decode:
        return f"not valid JSON ({decode.msg} at column {decode.colno})"
    if not isinstance(value, dict):
        return f"not a record (expected a JSON object, got {type(value).__name__})"
    missing = [key for key in REQUIRED if key not in value]
    if missing:
        return f"not a record (no {', '.join(map(repr, missing))})"
    return f"not a record ({problem(SampleRecord, err)})"


def read_records(paths) -> list[SampleRecord]:
    """The complete records of these files (see read_record_file: a cut-off last line or an
    empty file is left out; anything else malformed raises RecordError naming file and line)."""
    return [record for path in paths for record in read_record_file(path).records]
