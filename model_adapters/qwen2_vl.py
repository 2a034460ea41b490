"""collab_qwen2_vl: Qwen2-VL (Qwen/Qwen2-VL-2B-Instruct and -7B-Instruct).

Qwen2-VL has no fixed input size: its processor resizes every image to a multiple of
patch x merge (28 px) inside a pixel budget, keeping the aspect ratio (``smart_resize``),
and the language model sees one token per merged 2x2 patch, row-major over the merged
grid given by ``image_grid_thw``. Here "the encoder's input" is that budget: the model
arg ``max_pixels`` bounds the global image and every local image alike.
"""
from __future__ import annotations

import math

import numpy as np
from transformers import Qwen2VLForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

from collab_eval import flops as flop_counts
from collab_eval.edge import Box
from collab_eval.families import Family
from collab_eval.model_args import optional_integer
from model_adapters.lmms_adapter import adapter_class
from model_adapters.server import ServerModel, eight_bit

# LLaVA-1.5's 336 x 336 input area: 12 x 12 = 144 language tokens for a square image.
DEFAULT_MAX_PIXELS = 336 * 336
DEFAULT_MIN_PIXELS = 56 * 56  # the processor's own lower bound


class Qwen2VLServer(ServerModel):
    model_class = Qwen2VLForConditionalGeneration
    # ViCrop publishes no layer for Qwen2-VL; its Qwen2.5-VL-7B choice is layer 22 of 28.
    vicrop_layer = (22, 28)

    @staticmethod
    def family_args(max_pixels: int | None = None, min_pixels: int | None = None) -> dict:
        return {"max_pixels": optional_integer("max_pixels", max_pixels, minimum=1),
                "min_pixels": optional_integer("min_pixels", min_pixels, minimum=1)}

    def __init__(self, pretrained: str, *, max_pixels: int | None = None, min_pixels: int | None = None, **common):
        super().__init__(pretrained, **common)
        ip = self.processor.image_processor
        self.merge = ip.merge_size
        self.factor = ip.patch_size * ip.merge_size
        # Unset, the budget is LLaVA-1.5's area, or the checkpoint's own when it is smaller
        # (a checkpoint trained at a smaller input, like smalldetail-qwen2-vl).
        own_max, own_min = ip.size["longest_edge"] or DEFAULT_MAX_PIXELS, ip.size["shortest_edge"] or DEFAULT_MIN_PIXELS
        self.max_pixels = max_pixels if max_pixels is not None else min(DEFAULT_MAX_PIXELS, own_max)
        self.min_pixels = min_pixels if min_pixels is not None else min(DEFAULT_MIN_PIXELS, own_min, self.max_pixels)
        if not self.factor ** 2 <= self.min_pixels <= self.max_pixels:
            raise ValueError(f"{self.name}: need {self.factor ** 2} <= min_pixels <= max_pixels, "
                             f"got min_pixels={self.min_pixels}, max_pixels={self.max_pixels}")
        # The processor applies the same budget, so what the edge sends is not resized again.
        ip.size = {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels}
        self.input_side = round(math.sqrt(self.max_pixels))

    # A system turn ahead of the user's; None: the chat template's own (Qwen2-VL's and
    # Qwen2.5-VL's add "You are a helpful assistant.", as lmms-eval's adapters send).
    system_prompt: str | None = None

    def inputs(self, images, question):
        # As lmms-eval's qwen2_vl adapter: the images first, then the text, in one user turn.
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt is not None else []
        prompt = self.processor.apply_chat_template([*system, {"role": "user", "content": content}],
                                                    add_generation_prompt=True)
        return self.to_device(self.processor(images=images, text=prompt, return_tensors="pt"))

    def tokens_per_image(self, inputs) -> list[int]:
        return (inputs["image_grid_thw"].prod(-1) // self.merge ** 2).tolist()

    def image_token_positions(self, inputs, image_index):
        """Image tokens come in image order, each image's run as long as its own merged
        grid: the crop's run is located by the global's length, not assumed equal to it."""
        positions = (inputs["input_ids"][0] == self.model.config.image_token_id).nonzero().flatten()
        counts = self.tokens_per_image(inputs)
        if len(positions) != sum(counts):
            raise ValueError(f"{len(positions)} image tokens in the prompt, but the grids need {sum(counts)}")
        start = sum(counts[:image_index])
        return positions[start:start + counts[image_index]]

    def patch_grid(self, row, inputs, image_index, probes=None):
        _, h, w = inputs["image_grid_thw"][image_index].tolist()
        return row.reshape(h // self.merge, w // self.merge)

    def map_shape(self, inputs, image_index=0):
        _, h, w = inputs["image_grid_thw"][image_index].tolist()
        return h // self.merge, w // self.merge

    def pixel_layout(self, grad, inputs):
        """pixel_values are one row per patch, rows in (time, merged row, merged column, row
        in merge, column in merge) order, each row (channels, time, patch, patch): back to
        the image, summing the time copies (an image is repeated over the temporal patch)."""
        _, h, w = inputs["image_grid_thw"][0].tolist()
        p, m = self.factor // self.merge, self.merge
        rows = grad[:h * w].reshape(h // m, w // m, m, m, -1, grad.shape[1] // (p * p * 3), p, p).sum(dim=5)
        return rows.permute(0, 2, 5, 1, 3, 6, 4).reshape(h * p, w * p, -1).numpy()

    def last_logits(self, inputs):
        logits = super().last_logits(inputs)
        self.model.model.rope_deltas = None  # this forward's positions must not leak into the next call
        return logits

    def view_pixels(self, out) -> np.ndarray:
        """The processor's output is one row per patch (``pixel_layout``'s order), each image
        repeated over the temporal patch: the first copy, back into the image."""
        _, h, w = out["image_grid_thw"][0].tolist()
        p, m = self.factor // self.merge, self.merge
        rows = out["pixel_values"][:h * w].reshape(h // m, w // m, m, m, 3, -1, p, p)[:, :, :, :, :, 0]
        return eight_bit(rows.permute(0, 2, 5, 1, 3, 6, 4).reshape(h * p, w * p, 3))

    def frame(self, region: Box):
        return qwen2_vl_frame(region, self.factor, self.min_pixels, self.max_pixels)

    def first_image_pixels(self, inputs):
        return inputs["pixel_values"][:int(inputs["image_grid_thw"][0].prod())]  # one row per patch

    def continue_from(self, inputs, prefix):
        """With the first image's positions cached, only the other images are encoded: their
        features go in as the encoder's outputs, while ``image_grid_thw`` keeps every image,
        so that the 3D rotary positions are computed over the whole prompt."""
        if prefix is None:
            return inputs
        rest = {k: v for k, v in inputs.items() if k != "pixel_values"}
        grids = inputs["image_grid_thw"]
        if grids.shape[0] > 1:
            first_rows = int(grids[0].prod())  # pixel_values: one row per patch, image after image
            rest["mm_encoder_outputs"] = {"image": self.model.model.get_image_features(
                inputs["pixel_values"][first_rows:], grids[1:], return_dict=True)}
        # Positions come from the stored rope_deltas of the last call unless cleared: clear
        # them, so that they are recomputed from this prompt (transformers' Qwen2-VL state).
        self.model.model.rope_deltas = None
        return rest

    def concatenated(self, key, values):
        """The continued rows' pre-encoded images (``continue_from``) as one, in row order."""
        if key != "mm_encoder_outputs":
            return super().concatenated(key, values)
        features = [feature for value in values for feature in value["image"].pooler_output]
        return {"image": BaseModelOutputWithPooling(pooler_output=features)}

    def encoder_flops(self, inputs, first=0):
        vc = self.model.config.vision_config
        merged_width = vc.embed_dim * vc.spatial_merge_size ** 2
        vision = projector = 0
        for t, h, w in inputs["image_grid_thw"][first:].tolist():
            patches = t * h * w  # attention is per image (the encoder splits the sequence by image)
            vision += (flop_counts.patch_embedding(patches, vc.in_channels, vc.patch_size, vc.embed_dim,
                                                   temporal=vc.temporal_patch_size)
                       + flop_counts.vit_encoder(patches, vc.embed_dim, vc.embed_dim * vc.mlp_ratio, vc.num_heads,
                                                 vc.depth))
            tokens = patches // vc.spatial_merge_size ** 2  # the patch merger is the projector
            projector += (flop_counts.linear(tokens, merged_width, merged_width)
                          + flop_counts.linear(tokens, merged_width, vc.hidden_size))
        return {"vision": vision, "projector": projector}


FAMILY = Family(
    name="qwen2_vl", title="Qwen2-VL", server="model_adapters.qwen2_vl:Qwen2VLServer",
    reference_checkpoints=("Qwen/Qwen2-VL-7B-Instruct", "Qwen/Qwen2-VL-2B-Instruct"),
    lmms_eval_model="qwen2_vl", lmms_eval_model_args="device=cpu,device_map=cpu",
    tiny="collab_eval.lab.tiny_checkpoints:build_tiny_qwen2_vl", trained="smalldetail-qwen2-vl",
    recipe="collab_eval.lab.smalldetail_families:Qwen2VL",
    lmms_eval_differs="it re-encodes every image as JPEG at quality 85 and resizes it with PIL to multiples of "
                      "28 px before the processor: other pixels",
    lmms_eval_compare="none")
CollabQwen2VL = adapter_class(FAMILY)  # the lmms-eval class (--model collab_qwen2_vl)


def qwen2_vl_frame(region: Box, factor: int, min_pixels: int, max_pixels: int) -> tuple[Box, tuple[int, int]]:
    """What Qwen2-VL's processor shows of ``region``: all of it, squeezed into
    ``smart_resize``'s size (multiples of ``factor`` = patch x merge px, area within the
    budget, aspect kept as closely as that allows). The edge sends exactly that, so every
    grid cell is an equal fraction of the region."""
    x0, y0, x1, y1 = region
    height, width = smart_resize(max(y1 - y0, 1.0), max(x1 - x0, 1.0), factor=factor,
                                 min_pixels=min_pixels, max_pixels=max_pixels)
    return region, (width, height)
