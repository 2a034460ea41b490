"""The two-stage, entropy-gated edge-to-server method, for a batch of samples, top to bottom.

``run_batch`` is the whole data path; the lmms-eval adapter and the tests both call it:

1. edge: each sample's global image(s), resized to the encoder's input, encoded, counted;
2. server, stage 1: every sample answered from its global image(s) in one batched pass
   (logits per token; the question's attention map where a RoI may be needed);
3. gate: the answer's uncertainty score (a plug-in, collab_eval.scores) against the policy;
4. server: the region of interest (the run's locator, ViCrop's relative attention by
   default: collab_eval.locators), sent back as a request;
5. edge: the crop of the ORIGINAL image at the encoder's input, encoded, counted;
6. server, stage 2: every retransmitted sample answered from both images in one batched pass;
7. the sample's outcome: answers, scores, RoI, bytes, FLOPs, seconds.

Family-agnostic: a model family is a ``Server`` (model_adapters). A sample that fails fails
only itself; a batched pass that fails is retried sample by sample to find which.

The edge's steps (1 and 5, and the original's size for ``bytes_original``) run on the edge's
threads (collab_eval.edge_pool) beside the server's passes: ``run_batches`` reads and frames
the next batch while the server answers this one, a sample's crop is encoded while the server
locates the next sample's region, and the original's size is awaited only before the record is
handed on, never by a server step. Every record is the same whatever the number of threads.
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from collab_eval import locators, scores
from collab_eval.edge import Box, Codec, Transmission, encode_request, sanitize, send, strict_decoding, transmit
from collab_eval.edge_pool import CROP, GLOBAL, EdgePool, Task
from collab_eval.policy import Policy
from collab_eval.records import STAGE1_PARTS, Outcome, finite
from collab_eval.roi import find_roi
from collab_eval.server_contract import Answer, Limits, RunCaches, Server, image_key
from collab_eval.uncertainty import token_uncertainties

LOCATOR_PARTS = frozenset({"locate", "generic"})  # the FLOPs parts a locator may report


# ----- what goes in ------------------------------------------------------------------------
@dataclass(frozen=True)
class Method:
    """How a run answers every sample (fixed at start from the model args)."""
    policy: Policy
    codec: Codec
    score: str = "max"  # the gate's score: an installed score's name (collab_eval.scores)
    locator: str = "rel_att"  # the registered locator that finds the region (collab_eval.locators)
    highres: bool = False  # a map locator maps tiles of originals over 1024 px (ViCrop's "_high")
    record_map: bool = False  # keep the locator's map in the record (roi_map), at its grid resolution


@dataclass(frozen=True)
class SampleInput:
    """One sample asked of the pipeline."""
    key: str  # fixes the random policy's draw (the adapter uses "task/doc_id")
    scope: str  # which cached generic maps and original sizes the sample may reuse (the task)
    question: str
    limits: Limits
    visuals: Callable[[], object]  # the document's visuals; read (and decoded) by the edge, step 1


@dataclass
class SampleResult:
    """A sample's end: its outcome, or the error that failed it (``seconds`` then holds its total)."""
    sample: SampleInput
    outcome: Outcome | None = None
    error: Exception | None = None
    seconds: dict[str, float] = field(default_factory=dict)


# ----- the method ----------------------------------------------------------------------------
@dataclass
class InFlight:
    """A sample between the steps of a batch."""
    sample: SampleInput
    laps: "Laps"
    out: Outcome = field(default_factory=Outcome)
    originals: list[Image.Image] = field(default_factory=list)
    sent: list[Transmission] = field(default_factory=list)  # each global image as the server received it
    regions: list[Box] = field(default_factory=list)  # each global image's framing, original pixels
    stage1: Answer | None = None
    local: list[Transmission] = field(default_factory=list)  # the crop(s) sent in step 5
    original_bytes: list[Task] = field(default_factory=list)  # each original's size, for bytes_original
    cropping: Task | None = None  # step 5 on the edge's threads

    @property
    def images(self) -> list[Image.Image]:
        """The global images as the server received them: what stage 1 answers from."""
        return [image.image for image in self.sent]


def run_batch(server: Server, samples: list[SampleInput], *, method: Method, caches: RunCaches,
              edge: EdgePool | None = None) -> Iterator[SampleResult]:
    """Every sample of the batch through the method; each result yielded as soon as it is
    final, its original's size included (the caller writes it: a crash loses no finished
    record). Each outcome equals the one the sample gets alone. ``edge``: the edge's threads
    (none: its work runs in line on the caller's thread)."""
    yield from run_batches(server, [samples], method=method, caches=caches, edge=edge)


def run_batches(server: Server, batches: Iterable[list[SampleInput]], *, method: Method, caches: RunCaches,
                edge: EdgePool | None = None, ahead: int = 1) -> Iterator[SampleResult]:
    """``run_batch`` over each batch in turn, the edge ``ahead`` batches in front: while the
    server runs a batch's passes, the edge's threads read, decode, frame and encode the next
    batches' documents. Results come in the order ``run_batch`` gives them, each once its
    original's size (``bytes_original``, off the server's path) is known; at most
    ``HELD_RESULTS`` wait for it before the server waits for the edge."""
    edge = edge if edge is not None else EdgePool(0)
    batches, upcoming, held = iter(batches), deque(), deque()

    def read_ahead(batches_ready: int) -> None:
        while len(upcoming) < batches_ready:
            samples = next(batches, None)
            if samples is None:
                return
            upcoming.append([(sample, laps, edge.submit(GLOBAL, read_and_send_globals, server, sample, laps,
                                                        method=method, caches=caches, edge=edge))
                             for sample in samples for laps in [Laps()]])

    read_ahead(1)
    while upcoming:
        batch = upcoming.popleft()
        read_ahead(ahead)  # the next batches' edge work, beside this batch's passes
        flying = {}
        for result in run_prepared(server, batch, method=method, caches=caches, edge=edge, flying=flying):
            held.append((result, flying.get(id(result.sample))))
            yield from release(held, keep=0 if edge.inline else HELD_RESULTS)
    yield from release(held)


HELD_RESULTS = 32  # finished results waiting for their original's size, at most


def run_prepared(server: Server, batch: list[tuple[SampleInput, "Laps", Task]], *, method: Method,
                 caches: RunCaches, edge: EdgePool, flying: dict) -> Iterator[SampleResult]:
    """Steps 2 to 7 for a batch whose step 1 was submitted to the edge (``flying``: each
    sample's InFlight by the sample's id, filled here)."""
    ready = []
    for sample, laps, sent in batch:  # 1. edge: the global images, done ahead on the edge's threads
        try:
            ready.append(sent.result())
            flying[id(sample)] = ready[-1]
        except Exception as err:  # noqa: BLE001  -- one bad sample fails itself, never the run
            yield failure(sample, laps, err)
    for limits in dict.fromkeys(f.sample.limits for f in ready):  # one generate per generation limit
        yield from run_group(server, [f for f in ready if f.sample.limits == limits], limits, method=method,
                             caches=caches, edge=edge)


def read_and_send_globals(server: Server, sample: SampleInput, laps: "Laps", *, method: Method, caches: RunCaches,
                          edge: EdgePool) -> InFlight:
    """Step 1 on an edge thread: the document's images read, decoded strictly, then sent."""
    with strict_decoding():  # a broken (even truncated) image is this sample's failure
        with laps.reading():
            visuals = images_in(sample.visuals())
        return send_globals(server, sample, visuals, laps, method=method, caches=caches, edge=edge)


def release(held: deque, keep: int = 0) -> Iterator[SampleResult]:
    """The held (result, InFlight) pairs, in order, while the first one's originals' sizes
    are known, and beyond the last ``keep`` pairs waiting for them; a size that could not be
    computed fails its sample."""
    while held and (len(held) > keep or held[0][1] is None
                    or all(task.done() for task in held[0][1].original_bytes)):
        result, f = held.popleft()
        if f is None or not f.original_bytes:
            yield result
            continue
        try:
            size = sum(task.result() for task in f.original_bytes)
        except Exception as err:  # noqa: BLE001  -- one bad sample fails itself, never the run
            yield failure(f.sample, f.laps, err)
            continue
        if result.outcome is not None:
            result.outcome.bytes_original = size
        yield result


def run_group(server: Server, group: list[InFlight], limits: Limits, *, method: Method,
              caches: RunCaches, edge: EdgePool) -> Iterator[SampleResult]:
    """Steps 2 to 7 for samples sharing generation limits."""
    with Laps.shared("stage1", [f.laps for f in group]):  # 2. server: stage 1, one batched pass
        stage1 = answer_each(server, [(f.images, f.sample.question) for f in group], limits,
                             with_attention=method.policy.locates, keep_prefix=method.policy.name != "never")
    again = []
    for f, answer in zip(group, stage1):
        try:
            if isinstance(answer, Exception):
                raise answer
            f.stage1 = answer
            gate(f, method)  # 3. gate
            if not f.out.retransmitted:
                yield finish(f)
                continue
            crops = locate_crops(server, f, method, caches)  # 4. server: the RoI, asked of the edge
            # 5. edge: the crop(s), on the edge's threads while the server locates the next sample's
            f.cropping = edge.submit(CROP, send_crops, server, f, crops, method)
            again.append(f)
        except Exception as err:  # noqa: BLE001  -- one bad sample fails itself, never the run
            yield failure(f.sample, f.laps, err)
    cropped = []
    for f in again:
        try:
            f.cropping.result()
            cropped.append(f)
        except Exception as err:  # noqa: BLE001  -- one bad sample fails itself, never the run
            yield failure(f.sample, f.laps, err)
    again = cropped
    if not again:
        return
    with Laps.shared("stage2", [f.laps for f in again]):  # 6. server: stage 2, one batched pass
        stage2 = answer_each(server,
                             [([*f.images, *(crop.image for crop in f.local)], f.sample.question) for f in again],
                             limits, with_attention=False, prefixes=[f.stage1.prefix for f in again])
    for f, answer in zip(again, stage2):
        if isinstance(answer, Exception):
            yield failure(f.sample, f.laps, answer)
            continue
        f.out.answer_stage2 = f.out.answer = answer.text
        f.out.flops["stage2"] = sum(answer.flops.values())
        yield finish(f)


def send_globals(server: Server, sample: SampleInput, images: list, laps: "Laps", *, method: Method,
                 caches: RunCaches, edge: EdgePool | None = None) -> InFlight:
    """Step 1, edge -> server: every global image the task gives, each framed as the encoder sees it.
    Each original's size (``bytes_original``) is left to ``edge`` as a task (``original_bytes``)."""
    f = InFlight(sample, laps)
    with laps.lap("edge_global"):
        f.originals = [sanitize(image) for image in images]
        for original in f.originals:
            region, _ = server.frame((0.0, 0.0, float(original.width), float(original.height)))
            f.sent.append(send(server.global_view(original), method.codec))
            f.regions.append(region)
        f.out.image_sizes = [list(original.size) for original in f.originals]
        f.out.global_sizes = [list(image.image.size) for image in f.sent]
        f.out.bytes_global_images = [image.nbytes for image in f.sent]
        f.out.bytes_global = sum(f.out.bytes_global_images)
    if edge is None:  # called alone: the sizes now
        f.out.bytes_original = sum(caches.original_size(original, method.codec, sample.scope)
                                   for original in f.originals)
    else:
        f.original_bytes = [caches.original_size_later(original, method.codec, sample.scope, edge)
                            for original in f.originals]
    return f


def gate(f: InFlight, method: Method) -> None:
    """Step 3: stage 1's answer, its uncertainty, and whether the sample is retransmitted."""
    uncertainty = token_uncertainties(f.stage1.logits)
    # Every installed score (collab_eval.scores), so one always run gives each score's curve.
    values = scores.evaluate(scores.StageOneAnswer(f.stage1.logits, f.stage1.tokens, f.stage1.text))
    score = values[method.score]
    f.out.answer_stage1 = f.out.answer = f.stage1.text
    f.out.min_entropy = uncertainty.min_entropy
    f.out.shannon_entropy = uncertainty.shannon_entropy
    f.out.scores = {k: finite(v) for k, v in values.items()}
    f.out.score = finite(score)
    f.out.flops.update({part: f.stage1.flops[part] for part in STAGE1_PARTS})
    f.out.retransmitted = method.policy.retransmit(score, f.sample.key)


def locate_crops(server: Server, f: InFlight, method: Method, caches: RunCaches) -> list[tuple[int, Box]]:
    """Step 4, server: the region(s) to ask for, as (image index, box in original pixels)."""
    if method.policy.name == "tiles":  # no request: the edge always sends each image's 2x2 tiles
        return [(i, tile) for i, original in enumerate(f.originals) for tile in quadrants(*original.size)]
    with f.laps.lap("roi"):
        found = locators.load(method.locator).locate(locators.LocateRequest(
            server, f.sample.question, f.stage1, f.images, f.regions, [original.size for original in f.originals],
            f.sample.scope, caches, highres=method.highres,
            send_tiles=lambda i, boxes: [transmit(f.originals[i], *server.frame(box), method.codec) for box in boxes]))
        if set(found.flops) - LOCATOR_PARTS:
            raise ValueError(f"locator {method.locator!r} reported FLOPs parts {sorted(found.flops)}; "
                             f"a locator's parts are {sorted(LOCATOR_PARTS)}")
        f.out.flops.update(found.flops)
        f.out.generic_cached, f.out.bytes_tiles, look = found.generic_cached, found.bytes_tiles, found.image
        roi = found.box if found.box is not None else find_roi(
            found.map, found.region or f.regions[look], f.originals[look].size, server.input_side)
        f.out.roi, f.out.roi_image = list(roi), look
        if method.record_map and found.map is not None:
            f.out.roi_map = [[float(f"{v:.4g}") for v in row] for row in np.nan_to_num(np.asarray(found.map, float))]
            f.out.roi_map_region = [round(v, 3) for v in (found.region or f.regions[look])]
        f.out.bytes_request = len(encode_request(roi))
    return [(look, roi)]


def send_crops(server: Server, f: InFlight, crops: list[tuple[int, Box]], method: Method) -> None:
    """Step 5, edge -> server: the crop(s), each from its own ORIGINAL image, at the encoder's input size."""
    with f.laps.lap("edge_local"):
        framed = [server.frame(crop) for _, crop in crops]
        f.local = [transmit(f.originals[i], *frame, method.codec) for (i, _), frame in zip(crops, framed)]
        f.out.local_regions = [[float(v) for v in region] for region, _ in framed]
        f.out.local_sizes = [list(size) for _, size in framed]
        f.out.bytes_local = sum(crop.nbytes for crop in f.local)


def finish(f: InFlight) -> SampleResult:
    """Step 7: totals, and the one-image fields of the image the RoI came from (else the first)."""
    f.stage1 = None  # the prefix it holds is freed once the sample is done
    out, shown = f.out, f.out.roi_image or 0
    out.image_size = out.image_sizes[shown]
    out.global_region = [round(v, 3) for v in f.regions[shown]]
    out.image_key = image_key(f.sent[shown].image)
    out.bytes_total = out.bytes_global + out.bytes_request + out.bytes_local + out.bytes_tiles
    out.flops_total = sum(out.flops.values())
    out.seconds = f.laps.with_total()
    return SampleResult(f.sample, out, seconds=out.seconds)


def failure(sample: SampleInput, laps: "Laps", err: Exception) -> SampleResult:
    return SampleResult(sample, error=err, seconds={"total": laps.total()})


def answer_each(server: Server, requests: list, limits: Limits, *, with_attention: bool, keep_prefix: bool = False,
                prefixes: list | None = None) -> list[Answer | Exception]:
    """One batched pass; if it fails, each request alone, so only the failing ones fail."""
    try:
        return server.answer_batch(requests, limits, with_attention, keep_prefix, prefixes)
    except Exception as err:  # noqa: BLE001  -- which sample? each tries again alone
        if len(requests) == 1:
            return [err]
    answers = []
    for i, request in enumerate(requests):
        try:
            alone = [prefixes[i]] if prefixes is not None else None
            answers.append(server.answer_batch([request], limits, with_attention, keep_prefix, alone)[0])
        except Exception as err:  # noqa: BLE001  -- becomes this sample's failed result
            answers.append(err)
    return answers


VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".flv", ".wmv", ".m4v", ".mpeg", ".mpg")


def images_in(visuals) -> list:
    """The images among what a task's ``doc_to_visual`` gave, in order (lists flattened).
    Video and audio are out of scope: they, and a document with no image, fail the sample
    with a message saying so."""
    found = []
    for item in visuals if isinstance(visuals, (list, tuple)) else [visuals]:
        if isinstance(item, (list, tuple)):
            found.extend(images_in(item))
        elif isinstance(item, dict) and "array" in item:
            raise ValueError("the task gives audio: collab adapters evaluate image tasks only (audio is out of scope)")
        elif isinstance(item, str) and item.lower().endswith(VIDEO_SUFFIXES):
            raise ValueError(f"the task gives a video ({item}): "
                             "collab adapters evaluate image tasks only (video is out of scope)")
        elif item is not None:
            found.append(item)
    if not found:
        raise ValueError("the document's visuals hold no image (doc_to_visual gave "
                         f"{type(visuals).__name__} {visuals!r:.80})")
    return found


def quadrants(width: int, height: int) -> list[Box]:
    """The 2x2 tiles of a width x height image, row by row (original pixels)."""
    xs, ys = (0.0, width / 2, float(width)), (0.0, height / 2, float(height))
    return [(xs[i], ys[j], xs[i + 1], ys[j + 1]) for j in range(2) for i in range(2)]


class Laps:
    """A sample's seconds per step (the record's ``seconds``); reading its document is
    counted in the total only."""

    def __init__(self):
        self.laps: dict[str, float] = {}
        self.read = 0.0

    @contextmanager
    def lap(self, name: str):
        started = time.perf_counter()
        yield
        self.laps[name] = round(time.perf_counter() - started, 6)

    @contextmanager
    def reading(self):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.read += time.perf_counter() - started

    @staticmethod
    @contextmanager
    def shared(name: str, laps: list["Laps"]):
        """A step run for several samples at once (a batched stage): each its share."""
        started = time.perf_counter()
        yield
        share = (time.perf_counter() - started) / max(len(laps), 1)
        for each in laps:
            each.laps[name] = round(share, 6)

    def total(self) -> float:
        return round(self.read + sum(self.laps.values()), 6)

    def with_total(self) -> dict[str, float]:
        return {**self.laps, "total": self.total()}
