"""collab_llava_next: LLaVA-NeXT (llava-hf/llava-v1.6-vicuna-7b-hf), the paper's HD baseline.

LLaVA-NeXT's processor ("anyres") picks, for each image, the best of ``image_grid_pinpoints``
(``select_best_resolution``), resizes the image to fit it keeping the aspect ratio, pads it to
the pinpoint and cuts it into tiles of the encoder's input (336 px on the 7B), and adds a base
view: the whole image squashed to one tile. The language model sees the base view's patches,
then the tiles' patches stitched into one grid over the pinpoint canvas, cropped back to the
image (``unpad_image``) with one newline token after each row: 576 + 48 x 48 + 48 = 2,928 image
tokens for a 672 x 672 image on the 7B.

What the edge sends: each region at the size the processor resizes it to before padding (the
pinpoint fit), so that the processor computes the tiles and the base view from it; a region
smaller than that fit is sent at its own size (the processor upsamples it exactly as it
would the original, and the edge never sends more pixels than the original holds).

The map: the last prompt token's attention over the stitched tile grid, newlines dropped:
one map over the unpadded canvas, which is the sent image, so every cell is an equal
fraction of the region (up to the unpadding's rounding, under one cell). The base view's
attention is not used: it is the same image at a quarter of the resolution (on a 2 x 2
grid), and the HD model's point is the fine grid.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from PIL import Image
from transformers import LlavaNextForConditionalGeneration
from transformers.image_processing_utils import select_best_resolution

from collab_eval import flops as flop_counts
from collab_eval.edge import Box, resample
from collab_eval.families import Family
from model_adapters.lmms_adapter import adapter_class
from model_adapters.server import ServerModel


@dataclass(frozen=True)
class AnyresLayout:
    """How LLaVA-NeXT lays out one image of ``size`` (height, width) as the processor got it:
    the pinpoint (height, width) chosen, its tiles (rows, columns), and the feature grid the
    language model sees after unpadding (``rows`` x ``cols`` cells, cropped from the canvas
    grid at ``top``/``left``), plus the base view's ``base`` x ``base`` cells."""
    pinpoint: tuple[int, int]
    tiles: tuple[int, int]
    base: int
    canvas: tuple[int, int]  # the feature grid over the whole pinpoint (rows, columns)
    top: int
    left: int
    rows: int
    cols: int

    @property
    def tokens(self) -> int:
        """Language tokens of the image: the base view, then each grid row and its newline."""
        return self.base * self.base + self.rows * (self.cols + 1)

    @property
    def views(self) -> int:
        """Encoder passes: the base view and every tile."""
        return 1 + self.tiles[0] * self.tiles[1]


def anyres_layout(size: tuple[int, int], pinpoints: list, tile: int, patch: int) -> AnyresLayout:
    """The layout transformers computes (``get_anyres_image_grid_shape``, ``unpad_image``)
    for an image of ``size`` (height, width)."""
    height, width = int(size[0]), int(size[1])
    pinpoint = tuple(select_best_resolution((height, width), [list(p) for p in pinpoints]))
    tiles = (pinpoint[0] // tile, pinpoint[1] // tile)
    base = tile // patch
    canvas_h, canvas_w = tiles[0] * base, tiles[1] * base
    top = left = 0
    rows, cols = canvas_h, canvas_w
    if width / height > canvas_w / canvas_h:  # as unpad_image: the padding is above and below
        new_height = int(round(height * (canvas_w / width), 7))
        top = (canvas_h - new_height) // 2
        rows = canvas_h - 2 * top
    else:
        new_width = int(round(width * (canvas_h / height), 7))
        left = (canvas_w - new_width) // 2
        cols = canvas_w - 2 * left
    return AnyresLayout(pinpoint, tiles, base, (canvas_h, canvas_w), top, left, rows, cols)


def pinpoint_fit(width: int, height: int, pinpoints: list) -> tuple[int, int]:
    """(w, h) the processor resizes a ``width`` x ``height`` image to before padding it to
    its pinpoint (``select_best_resolution``, then transformers' ``get_patch_output_size``)."""
    target_h, target_w = select_best_resolution((height, width), [list(p) for p in pinpoints])
    scale_w, scale_h = target_w / width, target_h / height
    if scale_w < scale_h:
        return target_w, min(math.ceil(height * scale_w), target_h)
    return min(math.ceil(width * scale_h), target_w), target_h


def llava_next_frame(region: Box, pinpoints: list) -> tuple[Box, tuple[int, int]]:
    """What LLaVA-NeXT's processor shows of ``region``: all of it, aspect kept. The edge
    sends it at the pinpoint fit when that is smaller than the region, else at the region's
    own size (the processor upsamples either way; the edge never sends more pixels)."""
    x0, y0, x1, y1 = region
    width, height = max(1, round(x1 - x0)), max(1, round(y1 - y0))
    fit = pinpoint_fit(width, height, pinpoints)
    return region, (fit if fit[0] < width else (width, height))


class LlavaNextServer(ServerModel):
    model_class = LlavaNextForConditionalGeneration
    sends = "fit"  # the pinpoint fit of each image, never upsampled (global_view, frame)

    def __init__(self, pretrained: str, **common):
        super().__init__(pretrained, **common)
        config = self.model.config
        if config.vision_feature_select_strategy != "default":
            raise ValueError(f"{self.name}: vision_feature_select_strategy {config.vision_feature_select_strategy!r} "
                             "is not supported (the maps assume 'default': the class token dropped)")
        ip = self.processor.image_processor
        self.pinpoints = [list(p) for p in ip.image_grid_pinpoints]
        self.tile = ip.crop_size["height"]  # the processor cuts tiles of the crop size
        self.patch = config.vision_config.patch_size
        if self.tile != config.vision_config.image_size:
            raise ValueError(f"{self.name}: the processor's tiles are {self.tile} px, the vision tower's input "
                             f"{config.vision_config.image_size} px")
        self.input_side = self.tile

    # ----- prompt and tokens ------------------------------------------------------
    def inputs(self, images, question):
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]
        prompt = self.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        return self.to_device(self.processor(images=images, text=prompt, return_tensors="pt"))

    def layouts(self, inputs) -> list[AnyresLayout]:
        return [anyres_layout(size, self.pinpoints, self.tile, self.patch) for size in inputs["image_sizes"].tolist()]

    def image_token_positions(self, inputs, image_index):
        """Each image's run of tokens is as long as its own layout (base view, grid rows and
        newlines): a crop's run is found by the lengths before it, not assumed equal."""
        positions = (inputs["input_ids"][0] == self.model.config.image_token_id).nonzero().flatten()
        counts = [layout.tokens for layout in self.layouts(inputs)]
        if len(positions) != sum(counts):
            raise ValueError(f"{len(positions)} image tokens in the prompt, but the images' layouts need {sum(counts)}")
        start = sum(counts[:image_index])
        return positions[start:start + counts[image_index]]

    # ----- the map ----------------------------------------------------------------------
    def patch_grid(self, row, inputs, image_index, probes=None):
        """The stitched tile grid (the base view and the newline column dropped)."""
        layout = self.layouts(inputs)[image_index]
        return row[layout.base * layout.base:].reshape(layout.rows, layout.cols + 1)[:, :layout.cols]

    def map_shape(self, inputs, image_index=0):
        layout = self.layouts(inputs)[image_index]
        return layout.rows, layout.cols

    def pixel_layout(self, grad, inputs):
        """The tiles' pixel gradients stitched over the pinpoint canvas and cropped like the
        map (the base view's are left out), as (height, width, channels)."""
        layout = self.layouts(inputs)[0]
        (tr, tc), side = layout.tiles, self.tile
        tiles = grad[0, 1:layout.views]  # (tiles, channels, side, side), row-major over the pinpoint
        canvas = tiles.reshape(tr, tc, -1, side, side).permute(0, 3, 1, 4, 2).reshape(tr * side, tc * side, -1)
        px = self.patch
        return canvas[layout.top * px:(layout.top + layout.rows) * px,
                      layout.left * px:(layout.left + layout.cols) * px].numpy()

    def frame(self, region: Box):
        return llava_next_frame(region, self.pinpoints)

    def global_view(self, original: Image.Image) -> Image.Image:
        """Not the processor's output (its base view and tiles are many images): the whole
        original at its pinpoint fit, never upsampled (``frame`` of the whole image), resampled
        as the edge resamples a local image; the processor makes the base view and the tiles
        from it. Under the pinpoints that is the original itself, so the model sees what its
        processor makes of the original; above them the base view is squashed from the fit, not
        from the original (docs/families.md, "policy=never against lmms-eval's own adapters")."""
        region, size = self.frame((0.0, 0.0, float(original.width), float(original.height)))
        return resample(original, region, size)

    # ----- prefix reuse and batching -------------------------------------------------------
    def first_image_pixels(self, inputs):
        return inputs["pixel_values"][0][:self.layouts(inputs)[0].views]  # without the batch's padding views

    def prefix_facts(self, inputs):
        return {**super().prefix_facts(inputs), "image_size": tuple(inputs["image_sizes"][0].tolist())}

    def continue_from(self, inputs, prefix):
        """With the first image's positions cached, only the other images are encoded."""
        if prefix is None:
            return inputs
        rest = {k: v for k, v in inputs.items() if k not in ("pixel_values", "image_sizes")}
        if inputs["pixel_values"].shape[0] > 1:
            rest["pixel_values"], rest["image_sizes"] = inputs["pixel_values"][1:], inputs["image_sizes"][1:]
        return rest

    def concatenated(self, key, values):
        """Per-image views of several samples as one: each sample's are padded to its own
        most views; the batch's to the most of all (the model drops padding views by
        ``image_sizes`` before the vision tower)."""
        if key != "pixel_values":
            return super().concatenated(key, values)
        most = max(v.shape[1] for v in values)
        return torch.cat([torch.nn.functional.pad(v, (0, 0, 0, 0, 0, 0, 0, most - v.shape[1])) for v in values])

    # ----- FLOPs ---------------------------------------------------------------------------------
    def encoder_flops(self, inputs, first=0):
        """The vision tower on the base view and every tile (the tiles' features later cut
        by unpadding are computed all the same), and the projector on each view's patches.
        The newlines are a learned vector (no FLOPs); their tokens are in the prompt."""
        vc, tc = self.model.config.vision_config, self.model.config.text_config
        feature_layer = self.model.config.vision_feature_layer
        concat = len(feature_layer) if isinstance(feature_layer, (list, tuple)) else 1
        patches = (self.tile // self.patch) ** 2
        views = sum(layout.views for layout in self.layouts(inputs)[first:])
        per_view = (flop_counts.patch_embedding(patches, vc.num_channels, vc.patch_size, vc.hidden_size)
                    + flop_counts.vit_encoder(patches + 1, vc.hidden_size, vc.intermediate_size,
                                              vc.num_attention_heads, vc.num_hidden_layers))
        projector = (flop_counts.linear(patches, vc.hidden_size * concat, tc.hidden_size)
                     + flop_counts.linear(patches, tc.hidden_size, tc.hidden_size))
        return {"vision": views * per_view, "projector": views * projector}


FAMILY = Family(
    name="llava_next", title="LLaVA-NeXT", server="model_adapters.llava_next:LlavaNextServer",
    reference_checkpoints=("llava-hf/llava-v1.6-vicuna-7b-hf", "llava-hf/llava-v1.6-vicuna-13b-hf"),
    lmms_eval_model="llava_hf", lmms_eval_model_args="device=cpu,device_map=cpu",
    tiny="collab_eval.lab.tiny_checkpoints:build_tiny_llava_next",
    trained="smalldetail-llava-next",
    recipe="collab_eval.lab.smalldetail_families:LlavaNext",
    lmms_eval_differs="other pixels above the pinpoints by design: the edge sends the pinpoint fit, llava_hf "
                      "squashes the base view from the original and this adapter from the fit; under them the same "
                      "pixels. Answers mostly the same, not always (tiny-llava-next: 16 of 16 collab_pope_mini, "
                      "11 of 12 of the never-vs-lmms-eval test's noise images)",
    # Not compared sample by sample: one token in the 6th place differs on a 640 x 160 image.
    # tests/test_llava_next_cli.py holds it to collab_pope_mini's 16 equal answers.
    lmms_eval_compare="none",
    never_label="HD baseline")  # policy=never: the paper's LLaVA-1.5-HD baseline
CollabLlavaNext = adapter_class(FAMILY)  # the lmms-eval class (--model collab_llava_next)
