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
locates the next sample's region and runs the next batch's stage 1 (a batch's stage 2 follows
the next batch's stage 1), and the original's size is awaited only before the record is handed
on, never by a server step. Every record is the same whatever the number of threads.
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
    """A sample's end: its outcome and, for a failed sample, the error that failed it and the
    step it failed in (``failed_step``). A failed sample's outcome is partial but truthful:
    everything sent and computed up to the failure (bytes and FLOPs by part, stage 1's answer
    and scores where it had them), totals computed as for a finished one, ``answer`` "" (scored
    wrong)."""
    sample: SampleInput
    outcome: Outcome | None = None
    error: Exception | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    failed_step: str | None = None  # read, edge_global, stage1, gate, locate, edge_local, stage2


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
    step: str = "read"  # the step running now: the failed one, if the sample fails

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
    batches' documents, and a batch's crops are encoded while the server runs the next batch's
    stage 1 (its stage 2 comes after that). Results come in the order ``run_batch`` gives them,
    each once its original's size (``bytes_original``, off the server's path) is known; at most
    ``HELD_RESULTS`` wait for it before the server waits for the edge."""
    edge = edge if edge is not None else EdgePool(0)
    batches, upcoming, held = iter(batches), deque(), deque()

    def read_ahead(batches_ready: int) -> None:
        while len(upcoming) < batches_ready:
            samples = next(batches, None)
            if samples is None:
                return
            upcoming.append([(f, edge.submit(GLOBAL, read_and_send_globals, server, f, method=method, caches=caches,
                                             edge=edge))
                             for f in (InFlight(sample, Laps()) for sample in samples)])

    def handed_on(steps: list) -> Iterator[SampleResult]:
        for result in settled(server, steps):
            held.append(result)
            yield from release(held, keep=0 if edge.inline else HELD_RESULTS)

    read_ahead(1)
    behind: list = []  # the previous batch's steps, its stage 2 still to run
    while upcoming:
        batch = upcoming.popleft()
        read_ahead(ahead)  # the next batches' edge work, beside this batch's passes
        steps = run_prepared(server, batch, method=method, caches=caches, edge=edge)
        yield from handed_on(behind)  # its crops were encoded during this batch's stage 1
        behind = steps
    yield from handed_on(behind)
    yield from release(held)


HELD_RESULTS = 32  # finished results waiting for their original's size, at most


@dataclass
class Waiting:
    """Samples of one generation limit whose crops the edge is making: steps 5 (the wait) to 7
    are still to run."""
    samples: list[InFlight]
    limits: Limits


def run_prepared(server: Server, batch: list[tuple[InFlight, Task]], *, method: Method, caches: RunCaches,
                 edge: EdgePool) -> list[tuple[SampleResult, InFlight] | Waiting]:
    """Steps 2 to 5 for a batch whose step 1 was submitted to the edge: in order, each sample
    that ended (answered at the gate, or failed) and each group waiting for its crops."""
    ready, steps = [], []
    for f, sent in batch:  # 1. edge: the global images, done ahead on the edge's threads
        try:
            ready.append(sent.result())
        except Exception as err:  # noqa: BLE001  -- one bad sample fails itself, never the run
            steps.append((failure(f, err), f))
    for limits in dict.fromkeys(f.sample.limits for f in ready):  # one generate per generation limit
        steps += start_group(server, [f for f in ready if f.sample.limits == limits], limits, method=method,
                             caches=caches, edge=edge)
    return steps


def settled(server: Server, steps: list) -> Iterator[tuple[SampleResult, InFlight]]:
    """``run_prepared``'s steps as results in their order, each waiting group through stage 2."""
    for step in steps:
        if isinstance(step, Waiting):
            yield from finish_group(server, step)
        else:
            yield step


def read_and_send_globals(server: Server, f: InFlight, *, method: Method, caches: RunCaches,
                          edge: EdgePool) -> InFlight:
    """Step 1 on an edge thread: the document's images read, decoded strictly, then sent (into
    ``f``, so that a failure keeps what was sent before it)."""
    with strict_decoding():  # a broken (even truncated) image is this sample's failure
        with f.laps.reading():
            visuals = images_in(f.sample.visuals())
        f.step = "edge_global"
        return send_globals(server, f.sample, visuals, f.laps, method=method, caches=caches, edge=edge, into=f)


def release(held: deque, keep: int = 0) -> Iterator[SampleResult]:
    """The held (result, InFlight) pairs, in order, while the first one's originals' sizes
    are known, and beyond the last ``keep`` pairs waiting for them; a size that could not be
    computed fails its sample (at ``edge_global``, where the original is encoded)."""
    while held and (len(held) > keep or all(task.done() for task in held[0][1].original_bytes)):
        result, f = held.popleft()
        if not f.original_bytes:
            yield result
            continue
        try:
            size = sum(task.result() for task in f.original_bytes)
        except Exception as err:  # noqa: BLE001  -- one bad sample fails itself, never the run
            f.step = "edge_global"
            yield failure(f, err)
            continue
        result.outcome.bytes_original = size
        yield result


def start_group(server: Server, group: list[InFlight], limits: Limits, *, method: Method,
                caches: RunCaches, edge: EdgePool) -> list[tuple[SampleResult, InFlight] | Waiting]:
    """Steps 2 to 5 for samples sharing generation limits: the samples that end at the gate
    or fail, then the retransmitted ones as a Waiting group, their crops on the edge's threads."""
    for f in group:
        f.step = "stage1"
    with Laps.shared("stage1", [f.laps for f in group]):  # 2. server: stage 1, one batched pass
        stage1 = answer_each(server, [(f.images, f.sample.question) for f in group], limits,
                             with_attention=method.policy.locates, keep_prefix=method.policy.name != "never")
    steps, again = [], []
    for f, answer in zip(group, stage1):
        try:
            if isinstance(answer, Exception):
                raise answer
            f.stage1, f.step = answer, "gate"
            gate(f, method)  # 3. gate
            if not f.out.retransmitted:
                steps.append((finish(f), f))
                continue
            f.step = "locate"
            crops = locate_crops(server, f, method, caches)  # 4. server: the RoI, asked of the edge
            f.step = "edge_local"
            # 5. edge: the crop(s), on the edge's threads while the server locates the next sample's
            f.cropping = edge.submit(CROP, send_crops, server, f, crops, method)
            again.append(f)
        except Exception as err:  # noqa: BLE001  -- one bad sample fails itself, never the run
            steps.append((failure(f, err), f))
    return steps + ([Waiting(again, limits)] if again else [])


def finish_group(server: Server, waiting: Waiting) -> Iterator[tuple[SampleResult, InFlight]]:
    """Steps 5 (the crops awaited) to 7 for a Waiting group."""
    again = []
    for f in waiting.samples:
        try:
            f.cropping.result()
            f.step = "stage2"
            again.append(f)
        except Exception as err:  # noqa: BLE001  -- one bad sample fails itself, never the run
            yield failure(f, err), f
    if not again:
        return
    with Laps.shared("stage2", [f.laps for f in again]):  # 6. server: stage 2, one batched pass
        stage2 = answer_each(server,
                             [([*f.images, *(crop.image for crop in f.local)], f.sample.question) for f in again],
                             waiting.limits, with_attention=False, prefixes=[f.stage1.prefix for f in again])
    for f, answer in zip(again, stage2):
        if isinstance(answer, Exception):
            yield failure(f, answer), f
            continue
        f.out.answer_stage2 = f.out.answer = answer.text
        f.out.flops["stage2"] = sum(answer.flops.values())
        yield finish(f), f


def send_globals(server: Server, sample: SampleInput, images: list, laps: "Laps", *, method: Method,
                 caches: RunCaches, edge: EdgePool | None = None, into: InFlight | None = None) -> InFlight:
    """Step 1, edge -> server: every global image the task gives, each framed as the encoder sees it.
    Each image's bytes are counted as it is sent (``into``: the sample's InFlight, so that a
    failure at a later image keeps what the earlier ones cost). Each original's size
    (``bytes_original``) is left to ``edge`` as a task (``original_bytes``), or computed now
    without one."""
    f = into if into is not None else InFlight(sample, laps)
    with laps.lap("edge_global"):
        f.originals = [sanitize(image) for image in images]
        f.out.image_sizes = [list(original.size) for original in f.originals]
        for original in f.originals:
            region, _ = server.frame((0.0, 0.0, float(original.width), float(original.height)))
            f.sent.append(send(server.global_view(original), method.codec))
            f.regions.append(region)
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
    # What stage 1 produced and cost, kept if a score then fails the sample.
    f.out.answer_stage1 = f.out.answer = f.stage1.text
    f.out.flops.update({part: f.stage1.flops[part] for part in STAGE1_PARTS})
    uncertainty = token_uncertainties(f.stage1.logits)
    f.out.min_entropy = uncertainty.min_entropy
    f.out.shannon_entropy = uncertainty.shannon_entropy
    # Every installed score (collab_eval.scores), so one always run gives each score's curve; a
    # score not chosen that gives no number is left out of ``scores`` (missing), the chosen one fails the sample.
    values = scores.evaluate(scores.StageOneAnswer(f.stage1.logits, f.stage1.tokens, f.stage1.text),
                             chosen=method.score)
    score = values[method.score]
    f.out.scores = {k: finite(v) for k, v in values.items()}
    f.out.score = finite(score)
    f.out.retransmitted = method.policy.retransmit(score, f.sample.key)


def locate_crops(server: Server, f: InFlight, method: Method, caches: RunCaches) -> list[tuple[int, Box]]:
    """Step 4, server: the region(s) to ask for, as (image index, box in original pixels).
    What the locator returns is checked here, and every failure names the locator: an error
    it raises, FLOPs that are not counts, a map with NaN or infinity, an image index out of
    range, a box that is empty, not finite or wholly outside its image. A box partly outside is
    clipped to the image (``roi_clipped_from`` keeps the box as the locator gave it). Tiles the
    edge sends for the locator are counted as they are sent, so a failure keeps their bytes."""
    if method.policy.name == "tiles":  # no request: the edge always sends each image's 2x2 tiles
        return [(i, tile) for i, original in enumerate(f.originals) for tile in quadrants(*original.size)]
    name = method.locator

    def send_tiles(i: int, boxes: list[Box]) -> list[Transmission]:
        tiles = [transmit(f.originals[i], *server.frame(box), method.codec) for box in boxes]
        f.out.bytes_tiles += sum(tile.nbytes for tile in tiles)
        return tiles

    with f.laps.lap("roi"):
        try:
            found = locators.load(name).locate(locators.LocateRequest(
                server, f.sample.question, f.stage1, f.images, f.regions,
                [original.size for original in f.originals], f.sample.scope, caches, highres=method.highres,
                send_tiles=send_tiles))
        except Exception as err:  # noqa: BLE001  -- the sample's failure, naming the locator
            raise LocatorError(f"locator {name!r} failed: {type(err).__name__}: {err}") from err
        if not isinstance(found, locators.Located):
            raise LocatorError(f"locator {name!r} returned {type(found).__name__}, expected a Located")
        f.out.flops.update(checked_flops(name, found.flops))
        if found.bytes_tiles not in (0, f.out.bytes_tiles):
            raise LocatorError(f"locator {name!r} reported bytes_tiles={found.bytes_tiles!r} but the edge sent "
                               f"{f.out.bytes_tiles} bytes of tiles")
        f.out.generic_cached = bool(found.generic_cached)
        look = found.image
        if isinstance(look, bool) or not isinstance(look, (int, np.integer)) or not 0 <= look < len(f.originals):
            raise LocatorError(f"locator {name!r} returned image {look!r}; the sample has "
                               f"{len(f.originals)} image(s) (0-based)")
        look = int(look)
        size = f.originals[look].size
        if found.box is not None:
            roi, clipped = checked_box(name, found.box, size)
            if clipped:
                f.out.roi_clipped_from = [float(v) for v in found.box]
        else:
            grid = checked_map(name, found.map)
            region = f.regions[look] if found.region is None else checked_region(name, found.region)
            roi = find_roi(grid, region, size, server.input_side)
        f.out.roi, f.out.roi_image = list(roi), look
        if method.record_map and found.map is not None:
            f.out.roi_map = [[float(f"{v:.4g}") for v in row] for row in np.nan_to_num(np.asarray(found.map, float))]
            f.out.roi_map_region = [round(v, 3) for v in (found.region or f.regions[look])]
        f.out.bytes_request = len(encode_request(roi))
    return [(look, roi)]


class LocatorError(ValueError):
    """A locator failed or returned something unusable: its sample's failure, naming the locator."""


def checked_flops(name: str, flops) -> dict[str, int]:
    """A locator's FLOPs by part: parts ``locate``/``generic``, each a whole, finite count >= 0."""
    if not isinstance(flops, dict):
        raise LocatorError(f"locator {name!r} reported FLOPs {flops!r:.80}, expected a dict of parts")
    if set(flops) - LOCATOR_PARTS:
        raise LocatorError(f"locator {name!r} reported FLOPs parts {sorted(flops)}; "
                           f"a locator's parts are {sorted(LOCATOR_PARTS)}")
    out = {}
    for part, value in flops.items():
        ok = (not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
              and np.isfinite(value) and value >= 0 and float(value) == int(value))
        if not ok:
            raise LocatorError(f"locator {name!r} reported FLOPs {part}={value!r}, expected a whole number >= 0")
        out[part] = int(value)
    return out


def four_numbers(value) -> list[float] | None:
    try:
        numbers = [float(v) for v in value if not isinstance(v, (bool, str, bytes))]
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == 4 == len(value) else None


def checked_box(name: str, box, size: tuple[int, int]) -> tuple[Box, bool]:
    """A locator's box in whole pixels inside the image (rounded outwards), and whether it had to
    be clipped. Empty, not finite, not four numbers or wholly outside: the sample fails."""
    numbers = four_numbers(box)
    if numbers is None or not all(np.isfinite(numbers)):
        raise LocatorError(f"locator {name!r} returned box {box!r:.120}, expected four finite numbers "
                           "(x0, y0, x1, y1) in original pixels")
    x0, y0, x1, y1 = numbers
    width, height = size
    if not (x1 > x0 and y1 > y0):
        raise LocatorError(f"locator {name!r} returned an empty box {tuple(numbers)} (needs x1 > x0 and y1 > y0)")
    inside = (max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height)))
    if not (inside[2] > inside[0] and inside[3] > inside[1]):
        raise LocatorError(f"locator {name!r} returned box {tuple(numbers)} wholly outside the "
                           f"{width}x{height} image")
    clipped = inside != (x0, y0, x1, y1)
    left, top = int(np.floor(inside[0])), int(np.floor(inside[1]))
    right, bottom = int(np.ceil(inside[2])), int(np.ceil(inside[3]))
    return (left, top, max(right, left + 1), max(bottom, top + 1)), clipped


def checked_region(name: str, region) -> Box:
    numbers = four_numbers(region)
    if numbers is None or not all(np.isfinite(numbers)) or not (numbers[2] > numbers[0] and numbers[3] > numbers[1]):
        raise LocatorError(f"locator {name!r} returned map region {region!r:.120}, expected four finite numbers "
                           "(x0, y0, x1, y1) with x1 > x0 and y1 > y0")
    return tuple(numbers)


def checked_map(name: str, grid) -> np.ndarray:
    """A locator's map: a non-empty 2-D grid of finite numbers (NaN or infinity: the sample fails,
    it is never turned silently into a centre crop)."""
    try:
        values = np.asarray(grid, dtype=np.float64)
    except (TypeError, ValueError):
        raise LocatorError(f"locator {name!r} returned a map that is not numbers: {grid!r:.80}") from None
    if grid is None or values.ndim != 2 or values.size == 0:
        raise LocatorError(f"locator {name!r} returned a map of shape {values.shape}, expected a non-empty "
                           "2-D patch grid (or a box)")
    bad = ~np.isfinite(values)
    if bad.any():
        raise LocatorError(f"locator {name!r} returned a map with {int(np.isnan(values).sum())} NaN and "
                           f"{int(np.isinf(values).sum())} infinite value(s) of {values.size}")
    return values


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
    return SampleResult(f.sample, totals(f), seconds=f.out.seconds)


def totals(f: InFlight) -> Outcome:
    """The outcome's totals and one-image fields from what the sample sent and computed so far
    (a finished sample, or a failed one up to its failure)."""
    f.stage1 = None  # the prefix it holds is freed once the sample is done
    out, shown = f.out, f.out.roi_image or 0
    if shown < len(out.image_sizes):
        out.image_size = out.image_sizes[shown]
    if shown < len(f.regions):
        out.global_region = [round(v, 3) for v in f.regions[shown]]
    if shown < len(f.sent):
        out.image_key = image_key(f.sent[shown].image)
    out.bytes_total = out.bytes_global + out.bytes_request + out.bytes_local + out.bytes_tiles
    out.flops_total = sum(out.flops.values())
    out.seconds = f.laps.with_total()
    return out


def failure(f: InFlight, err: Exception) -> SampleResult:
    """A failed sample: what it sent and computed up to the failure, its error and the step
    (``f.step``); its answer is "" (scored as wrong)."""
    out = totals(f)
    out.answer = ""
    return SampleResult(f.sample, out, error=err, seconds=out.seconds, failed_step=f.step)


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
        try:
            yield
        finally:  # a step that fails still took its time
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
