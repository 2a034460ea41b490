"""collab_qwen2_5_vl: Qwen2.5-VL (Qwen/Qwen2.5-VL-3B-Instruct, -7B-Instruct).

Everything Qwen2-VL does (the processor's pixel budget, the merged grid, the prompt, the
pre-encoded crops of a continued prefix) holds here: the server is Qwen2-VL's. What
differs is the vision tower's cost: most of its blocks attend within windows of
``window_size`` pixels (8 x 8 patches, 4 x 4 language tokens, for the released checkpoints),
only the blocks in ``fullatt_block_indexes`` over the whole image; its blocks have a gated
(three-matrix) MLP, and its merger maps to the language model's width (``out_hidden_size``).
"""
from __future__ import annotations

import math

from transformers import Qwen2_5_VLForConditionalGeneration

from collab_eval import flops as flop_counts
from collab_eval.families import Family
from model_adapters.lmms_adapter import adapter_class
from model_adapters.qwen2_vl import Qwen2VLServer


class Qwen2_5VLServer(Qwen2VLServer):
    model_class = Qwen2_5_VLForConditionalGeneration
    vicrop_layer = (22, 28)  # ViCrop's own choice for Qwen2.5-VL-7B

    def encoder_flops(self, inputs, first=0):
        vc = self.model.config.vision_config
        merge = vc.spatial_merge_size
        merged_width = vc.hidden_size * merge ** 2
        vision = projector = 0
        for t, h, w in inputs["image_grid_thw"][first:].tolist():
            patches = t * h * w
            windows = [t * n for n in window_patches(h // merge, w // merge, vc.window_size // merge // vc.patch_size,
                                                     merge)]
            vision += flop_counts.patch_embedding(patches, vc.in_channels, vc.patch_size, vc.hidden_size,
                                                  temporal=vc.temporal_patch_size)
            for block in range(vc.depth):
                # Full-attention blocks attend per frame (an image: one), the others per window.
                spans = [h * w] * t if block in vc.fullatt_block_indexes else windows
                vision += (4 * flop_counts.linear(patches, vc.hidden_size, vc.hidden_size)
                           + sum(flop_counts.attention_core(n, n, vc.num_heads, vc.hidden_size // vc.num_heads)
                                 for n in spans)
                           + 3 * flop_counts.linear(patches, vc.hidden_size, vc.intermediate_size))
            tokens = patches // merge ** 2
            projector += (flop_counts.linear(tokens, merged_width, merged_width)
                          + flop_counts.linear(tokens, merged_width, vc.out_hidden_size))
        return {"vision": vision, "projector": projector}


def window_patches(rows: int, cols: int, side: int, merge: int) -> list[int]:
    """Patches in each attention window of one frame whose merged grid is ``rows`` x
    ``cols``: windows of ``side`` x ``side`` language tokens from the top left, the last row
    and column of windows cut by the grid's edge (each token is merge x merge patches)."""
    return [min(side, rows - i * side) * min(side, cols - j * side) * merge ** 2
            for i in range(math.ceil(rows / side)) for j in range(math.ceil(cols / side))]


FAMILY = Family(
    name="qwen2_5_vl", title="Qwen2.5-VL", server="model_adapters.qwen2_5_vl:Qwen2_5VLServer",
    reference_checkpoints=("Qwen/Qwen2.5-VL-7B-Instruct", "Qwen/Qwen2.5-VL-3B-Instruct"),
    lmms_eval_model="qwen2_5_vl", lmms_eval_model_args="device=cpu,device_map=cpu",
    tiny="collab_eval.lab.tiny_checkpoints:build_tiny_qwen2_5_vl",
    trained="smalldetail-qwen2-5-vl",
    recipe="collab_eval.lab.smalldetail_families:Qwen2_5VL",
    lmms_eval_differs="its chat class (what --model qwen2_5_vl runs) hands images to qwen_vl_utils without the "
                      "model args' pixel budget (each image at its own size, up to 16,384 tokens, resized with PIL; "
                      "the processor then resizes again to the budget) and loads bfloat16: other pixels at "
                      "collab's default budget; at a budget holding every image, dtype=bfloat16 and originals "
                      "neither side resizes the answers are equal (tests/test_qwen_vl_cli.py)",
    lmms_eval_compare="none")
CollabQwen2_5VL = adapter_class(FAMILY)  # the lmms-eval class (--model collab_qwen2_5_vl)
