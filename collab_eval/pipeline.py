"""The two-stage, entropy-gated edge-to-server pipeline for one sample, family-agnostic.

One data path, top to bottom: edge sends the global image -> server answers (stage 1)
-> gate -> server asks for its RoI -> edge sends the crop -> server answers from both.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from PIL import Image

from collab_eval.edge import Box, Codec, encode_request, encoded_size, sanitize, transmit
from collab_eval.policy import Policy
from collab_eval.records import STAGE1_PARTS, Outcome, finite
from collab_eval.roi import find_roi, relative_attention
from collab_eval.uncertainty import token_uncertainties

GENERIC_PROMPT = "Write a general description of the image."


@dataclass
class Answer:
    """What the server's model produced for one prompt."""
    text: str
    logits: "torch.Tensor"  # (steps, vocab) raw logits of the generated tokens  # noqa: F821
    flops: dict[str, int]  # vision, projector, prefill, decode
    attentions: list[np.ndarray] | None = None  # last prompt token -> each image's patch grid, in image order
    prefix: object | None = None  # the prompt's start through the first image, cached for later passes (opaque)


class Server(Protocol):
    """The part of a model family the pipeline needs (implemented in model_adapters)."""
    input_side: int  # encoder input side, pixels: the base RoI window side in original pixels

    def frame(self, region: Box) -> tuple[Box, tuple[int, int]]:
        """The part of ``region`` (original pixels) the encoder will see, and the (w, h)
        the edge should resample it to."""

    def answer(self, images: list[Image.Image], question: str, limits: "Limits", with_attention: bool,
               prefix: object | None = None, keep_prefix: bool = False) -> Answer:
        """``prefix``: an earlier answer's, reused where the prompts share it; ``keep_prefix``: return this one's."""

    def attention(self, image: Image.Image, prompt: str, prefix: object | None = None) -> tuple[np.ndarray, dict[str, int]]:
        """Patch-grid attention of the last token of ``prompt`` (one prefill), and its FLOPs."""


@dataclass(frozen=True)
class Settings:
    """How a run answers every sample (fixed at start from the model args)."""
    policy: Policy
    codec: Codec
    aggregation: str = "max"  # how token min-entropies become the gate's score: max / mean / first


@dataclass(frozen=True)
class Limits:
    """How far one answer may go: the task's generation limits within the run's cap."""
    max_new_tokens: int
    until: tuple[str, ...] = ()

    @classmethod
    def from_gen_kwargs(cls, gen_kwargs: dict, cap: int) -> "Limits":
        """lmms-eval's ``generation_kwargs``: a task's smaller ``max_new_tokens`` wins over
        the run's cap; ``until`` is a string or a list of stop strings."""
        asked = gen_kwargs.get("max_new_tokens")
        until = gen_kwargs.get("until") or ()
        return cls(min(cap, int(asked)) if asked else cap, (until,) if isinstance(until, str) else tuple(until))


def image_key(image: Image.Image) -> str:
    """Identity of an image by its pixels: the generic-map cache key, kept in the record."""
    return hashlib.sha1(image.tobytes() + repr(image.size).encode()).hexdigest()


@dataclass
class GenericMaps:
    """The generic-prompt map depends only on the image the server received: cache it per
    scope (the task), so that each task's costs stand alone whatever else ran in the process."""
    maps: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)

    def get(self, server: Server, image: Image.Image, key: tuple[str, str],
            prefix: object | None = None) -> tuple[np.ndarray, dict[str, int], bool]:
        if key in self.maps:
            return self.maps[key], {}, True
        grid, flops = server.attention(image, GENERIC_PROMPT, prefix=prefix)
        self.maps[key] = grid
        return grid, flops, False


@dataclass
class OriginalSizes:
    """``bytes_original`` depends only on the original's pixels and the codec: each distinct
    original is encoded once per scope (the task), not once per question about it."""
    sizes: dict[tuple[str, str, str], int] = field(default_factory=dict)

    def get(self, original: Image.Image, codec: Codec, scope: str) -> int:
        key = (scope, image_key(original), str(codec))  # hashing the pixels: ~1% of a PNG encode
        if key not in self.sizes:
            self.sizes[key] = encoded_size(original, codec)
        return self.sizes[key]


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
            raise ValueError(f"the task gives a video ({item}): collab adapters evaluate image tasks only (video is out of scope)")
        elif item is not None:
            found.append(item)
    if not found:
        raise ValueError("the document's visuals hold no image (doc_to_visual gave "
                         f"{type(visuals).__name__} {visuals!r:.80})")
    return found


def run_sample(server: Server, images: list, question: str, *, settings: Settings, limits: Limits,
               sample_key: str, cache_scope: str, generic_maps: GenericMaps,
               original_sizes: OriginalSizes | None = None) -> Outcome:
    """Run the pipeline on one sample with one or more images. ``sample_key`` fixes the
    random policy's draw, ``cache_scope`` the generic maps this sample may reuse. Raises on
    bad input; the caller turns that into a failed sample."""
    globals_ = send_globals(server, images, settings=settings, cache_scope=cache_scope, original_sizes=original_sizes)
    stage1 = server.answer(globals_.images, question, limits, with_attention=settings.policy.locates,
                           keep_prefix=settings.policy.name != "never")
    globals_.clock.lap("stage1")
    return finish_sample(server, globals_, stage1, question, settings=settings, limits=limits,
                         sample_key=sample_key, cache_scope=cache_scope, generic_maps=generic_maps)


@dataclass
class SentGlobals:
    """One sample after the edge sent its global images: what stage 1 answers from and what
    the later steps need. A batch runs every sample's stage 1 together between the two halves."""
    out: Outcome
    originals: list[Image.Image]
    sent: list  # edge.Sent per global image
    regions: list[Box]
    keys: list[str]
    clock: "Stopwatch"

    @property
    def images(self) -> list[Image.Image]:
        return [image.image for image in self.sent]

    def describe(self, index: int) -> None:
        """The record's one-image fields (image_size, global_region, image_key) are image ``index``'s:
        the first image's, or the one the RoI was cropped from."""
        self.out.image_size = self.out.image_sizes[index]
        self.out.global_region = [round(v, 3) for v in self.regions[index]]
        self.out.image_key = self.keys[index]


def send_globals(server: Server, images: list, *, settings: Settings, cache_scope: str,
                 original_sizes: OriginalSizes | None = None) -> SentGlobals:
    """Edge -> server: every global image the task gives, each framed as the encoder sees it."""
    out = Outcome()
    clock = Stopwatch()
    originals = [sanitize(image) for image in images]
    sent, regions = [], []
    for original in originals:
        region, size = server.frame((0.0, 0.0, float(original.width), float(original.height)))
        sent.append(transmit(original, region, size, settings.codec))
        regions.append(region)
    out.image_sizes = [list(original.size) for original in originals]
    out.bytes_global_images = [image.nbytes for image in sent]
    out.bytes_global = sum(out.bytes_global_images)
    sizes = original_sizes or OriginalSizes()
    out.bytes_original = sum(sizes.get(original, settings.codec, cache_scope) for original in originals)
    keys = [image_key(image.image) for image in sent]
    clock.lap("edge_global")
    globals_ = SentGlobals(out, originals, sent, regions, keys, clock)
    globals_.describe(0)
    return globals_


def finish_sample(server: Server, globals_: SentGlobals, stage1: Answer, question: str, *, settings: Settings,
                  limits: Limits, sample_key: str, cache_scope: str, generic_maps: GenericMaps) -> Outcome:
    """Everything after stage 1's answer: gate, RoI, the edge's crop(s), stage 2."""
    out, originals, sent, regions, keys, clock = (globals_.out, globals_.originals, globals_.sent, globals_.regions,
                                                  globals_.keys, globals_.clock)
    uncertainty = token_uncertainties(stage1.logits)
    score = uncertainty.score(settings.aggregation)
    out.answer_stage1 = out.answer = stage1.text
    out.min_entropy = uncertainty.min_entropy
    out.shannon_entropy = uncertainty.shannon_entropy
    out.scores = {k: finite(v) for k, v in uncertainty.scores().items()}
    out.score = finite(score)
    out.flops.update({part: stage1.flops[part] for part in STAGE1_PARTS})

    out.retransmitted = settings.policy.retransmit(score, sample_key)
    if out.retransmitted:
        if settings.policy.name == "tiles":  # no request: the edge always sends each image's 2x2 tiles
            crops = [(i, tile) for i, original in enumerate(originals) for tile in quadrants(*original.size)]
        else:
            # Server: where to look. The question's attention is one softmax row over every
            # image's tokens: the image holding most of it is the one the question is about.
            look = int(np.argmax([float(np.nansum(grid)) for grid in stage1.attentions]))
            original = originals[look]
            # The prefix holds the first image: the generic pass reuses it when that is the one looked at.
            generic, generic_flops, out.generic_cached = generic_maps.get(server, sent[look].image, (cache_scope, keys[look]),
                                                                          prefix=stage1.prefix)
            out.flops["generic"] = sum(generic_flops.values())
            roi = find_roi(relative_attention(stage1.attentions[look], generic), regions[look], original.size,
                           server.input_side)
            out.roi, out.roi_image = list(roi), look
            globals_.describe(look)
            out.bytes_request = len(encode_request(roi))
            crops = [(look, roi)]
            clock.lap("roi")

        # Edge -> server: the crop(s), each from its own image, at the encoder's input size.
        local = [transmit(originals[i], *server.frame(crop), settings.codec) for i, crop in crops]
        out.bytes_local = sum(sent_crop.nbytes for sent_crop in local)
        clock.lap("edge_local")

        stage2 = server.answer([*(image.image for image in sent), *(sent_crop.image for sent_crop in local)],
                               question, limits, with_attention=False, prefix=stage1.prefix)
        out.answer_stage2 = out.answer = stage2.text
        out.flops["stage2"] = sum(stage2.flops.values())
        clock.lap("stage2")

    out.bytes_total = out.bytes_global + out.bytes_request + out.bytes_local
    out.flops_total = sum(out.flops.values())
    out.seconds = clock.laps
    return out


def quadrants(width: int, height: int) -> list[Box]:
    """The 2x2 tiles of a width x height image, row by row (original pixels)."""
    xs, ys = (0.0, width / 2, float(width)), (0.0, height / 2, float(height))
    return [(xs[i], ys[j], xs[i + 1], ys[j + 1]) for j in range(2) for i in range(2)]


class Stopwatch:
    def __init__(self):
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self._last, 6)
        self._last = now

    def share(self, name: str, seconds: float) -> None:
        """A lap spent on several samples at once (a batch's stage 1): this sample's share."""
        self.laps[name] = round(seconds, 6)
        self._last = time.perf_counter()
