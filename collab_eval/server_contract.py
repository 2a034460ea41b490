"""The contract between the method and a model family: what the pipeline, the locators and
the lmms-eval adapter ask of a family's server (``Server``), and the values that cross it
(``Limits`` in, ``Answer`` out), plus the run's image-only caches (``RunCaches``).

model_adapters.server.ServerModel implements ``Server`` for every registered family
(collab_eval.families); the pipeline (collab_eval.pipeline) and the locators
(collab_eval.locators) use it and nothing else of a family.
"""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from PIL import Image

from collab_eval.edge import Box, Codec, encoded_size
from collab_eval.edge_pool import ORIGINAL, EdgePool, Task

GENERIC_PROMPT = "Write a general description of the image."


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


@dataclass
class Answer:
    """What the server's model produced for one prompt."""
    text: str
    logits: "torch.Tensor"  # (steps, vocab) raw logits of the generated tokens  # noqa: F821
    flops: dict[str, int]  # vision, projector, prefill, decode
    attentions: list[np.ndarray] | None = None  # last prompt token -> each image's patch grid, in image order
    prefix: object | None = None  # the prompt's start through the first image, cached for later passes (opaque)
    tokens: tuple[int, ...] | None = None  # the generated token ids, one per row of ``logits``


class Server(Protocol):
    """Every method the pipeline, the locators and the adapter call on a model family's server
    (model_adapters.server.ServerModel implements it for every family)."""
    name: str  # who speaks in error messages (the adapter's model id)
    input_side: int  # encoder input side, pixels: the base RoI window side in original pixels

    def frame(self, region: Box) -> tuple[Box, tuple[int, int]]:
        """The part of ``region`` (original pixels) the encoder will see, and the (w, h)
        the edge should resample it to."""

    def global_view(self, original: Image.Image) -> Image.Image:
        """The global image the edge sends for ``original``: the processor's own resize and
        crop of it, in 8 bits (``frame`` of the whole image is the part of the original it shows)."""

    def answer_batch(self, requests: list[tuple[list[Image.Image], str]], limits: Limits, with_attention: bool,
                     keep_prefix: bool = False, prefixes: list | None = None) -> list[Answer]:
        """Each (images, question) answered as it would be alone. ``prefixes``: each request's
        earlier answer's prefix, reused where the prompts share it; ``keep_prefix``: return each one's."""

    def attention(self, image: Image.Image, prompt: str,
                  prefix: object | None = None) -> tuple[np.ndarray, dict[str, int]]:
        """Patch-grid attention of the last token of ``prompt`` (one prefill), and its FLOPs."""

    def gradient_attention(self, image: Image.Image, prompt: str) -> tuple[np.ndarray, int]:
        """ViCrop's grad_att map of ``prompt`` on ``image`` (attention times the ReLU of its
        gradient, head-averaged) as a patch grid, and its FLOPs (locator grad_att)."""

    def pixel_gradient(self, image: Image.Image, prompt: str) -> tuple[tuple[np.ndarray, tuple[int, int]], int]:
        """The gradient of the same target with respect to the pixels the encoder gets,
        (height, width, channels), with the image's map shape; and its FLOPs (locator pure_grad)."""

    def without_image_placeholders(self, context: str) -> str:
        """The prompt without image placeholders (lmms-eval's ``<image>``, the processor's own
        image token): the images go ahead of the text (the adapter, before the pipeline)."""


# ----- state shared by the samples of a run -------------------------------------------------
def image_key(image: Image.Image) -> str:
    """Identity of an image by its pixels: the generic-map cache key, kept in the record."""
    return hashlib.sha1(image.tobytes() + repr(image.size).encode()).hexdigest()


@dataclass
class RunCaches:
    """What depends only on an image, computed once per scope (the task), so that each
    task's costs stand alone whatever else ran in the process: the generic prompt's map of a
    received image, and ``bytes_original`` of an original under the codec. Shared by the
    server's thread and the edge's threads: every look-up and insertion holds ``lock``."""
    generic_maps: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    original_sizes: dict[tuple[str, str, str], Task] = field(default_factory=dict)  # each encode, once
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def generic_map(self, server: Server, image: Image.Image, scope: str, key: str,
                    prefix: object | None) -> tuple[np.ndarray, dict[str, int], bool]:
        """(map, FLOPs spent on it now, whether it was cached). Server passes run on one
        thread, so which sample pays for a map does not depend on the edge's threads."""
        with self.lock:
            cached = self.generic_maps.get((scope, key))
        if cached is not None:
            return cached, {}, True
        grid, flops = server.attention(image, GENERIC_PROMPT, prefix=prefix)
        with self.lock:
            self.generic_maps[scope, key] = grid
        return grid, flops, False

    def original_size(self, original: Image.Image, codec: Codec, scope: str) -> int:
        """The original's encoded length under ``codec``, encoded once per scope and pixels."""
        key = (scope, image_key(original), str(codec))  # hashing the pixels: ~1% of a PNG encode
        with self.lock:
            encode = self.original_sizes.get(key)
            if encode is None:
                self.original_sizes[key] = encode = Task(encoded_size, (original, codec), {})
        return encode.result()  # run here, or wait for the thread already encoding the same pixels

    def original_size_later(self, original: Image.Image, codec: Codec, scope: str, edge: EdgePool) -> Task:
        """``original_size`` as a task of the edge's least urgent kind (hashing included)."""
        return edge.submit(ORIGINAL, self.original_size, original, codec, scope)
