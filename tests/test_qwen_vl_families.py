"""Qwen2.5-VL and Qwen3-VL on their tiny checkpoints, in process: what the edge sends is the
encoded payload, a planted spot maps back to its original pixels on non-square images, the
vision FLOPs equal what torch executes (Qwen2.5-VL's windowed blocks counted per window,
Qwen3-VL's DeepStack mergers as connector), and a continued prefix (Qwen3-VL: its DeepStack
features) answers as the whole prompt does."""
import numpy as np
import pytest
import torch
from PIL import Image

from collab_eval.edge import Codec, transmit
from collab_eval.pipeline import Limits, Method, RunCaches
from collab_eval.policy import Policy
from collab_eval.roi import find_roi
from model_adapters.flop_measure import counted
from tests.helpers import qwen2_vl_kind, run_one
from tests.test_qwen2_vl_geometry import hot_cell, painted

MAX_PIXELS = 224 * 224
# The registered families built on Qwen2-VL's server (Qwen2.5-VL, Qwen3-VL, ...).
FAMILIES = qwen2_vl_kind(strict=True)
# The encoder FLOPs are computed from the config exactly as torch executes them: no tolerance.
FLOP_TOLERANCE = 0


@pytest.fixture(scope="module", params=FAMILIES)
def qwen(request, tiny_server):
    return tiny_server(request.param, max_pixels=MAX_PIXELS)


def noise(width, height, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("size, spot", [((500, 500), (380, 110)), ((900, 300), (700, 220)),
                                        ((210, 650), (60, 500))])
def test_planted_spot_maps_back_to_its_original_pixels(qwen, size, spot):
    image = painted(size, spot, half=max(size) // 60 + 2)
    cell, shape, grid_thw = hot_cell(qwen, image)
    region, view_size = qwen.frame((0.0, 0.0, float(size[0]), float(size[1])))
    sent = transmit(image, region, view_size, Codec.parse("png"))
    sent_cell, sent_shape, sent_grid = hot_cell(qwen, sent.image)
    assert (sent_grid, sent_shape, sent_cell) == (grid_thw, shape, cell)  # the processor keeps what was sent
    assert view_size == (shape[1] * qwen.factor, shape[0] * qwen.factor)
    att = np.ones(shape)
    att[cell] = 100.0
    box = find_roi(att, region, size, qwen.input_side)
    assert box[0] <= spot[0] <= box[2] and box[1] <= spot[1] <= box[3], (box, spot)


def test_patch_size_is_the_families_own(qwen):
    assert qwen.factor == {"Qwen2_5VLServer": 28, "Qwen3VLServer": 32}[type(qwen).__name__]


def test_bytes_are_the_encoded_payloads(qwen):
    """Global and crop: the record's bytes are the lengths of the PNG payloads of exactly what
    the edge sends (the global: the processor's own resize of the original, Server.global_view,
    at frame's size; the crop: frame's box resized by the edge)."""
    image = noise(640, 280)
    method = Method(Policy("always"), Codec.parse("png"))
    out = run_one(qwen, [image], "what is the number on the sign ?", method=method,
                  limits=Limits(max_new_tokens=3), caches=RunCaches())
    codec = Codec.parse("png")
    _, size = qwen.frame((0.0, 0.0, 640.0, 280.0))
    view = qwen.global_view(image)
    assert view.size == size
    assert out.bytes_global == len(codec.encode(view))
    crop_region, crop_size = qwen.frame(tuple(out.roi))
    assert out.bytes_local == len(codec.encode(image.resize(crop_size, Image.Resampling.BICUBIC, box=crop_region)))
    assert out.bytes_total == out.bytes_global + out.bytes_local + out.bytes_request


def full_attention_flops(qwen, inputs) -> int:
    """What Qwen2.5-VL's tower would cost were every block full attention (for the check that
    the windows are what is counted)."""
    vc = qwen.model.config.vision_config
    n = int(inputs["image_grid_thw"][0].prod())
    return 2 * 2 * n * n * vc.hidden_size * vc.depth


def test_vision_flops_equal_what_torch_executes(qwen):
    """One image whose merged grid spans several of Qwen2.5-VL's windows (8 x 6 tokens, 4 x 4
    windows) and a second of another grid: vision + connector as FlopCounterMode counts them."""
    images = [noise(*qwen.frame((0.0, 0.0, 448.0, 336.0))[1]), noise(96, 160, seed=1)]
    inputs = qwen.inputs(images, "q")
    with torch.inference_mode():
        _, measured = counted(lambda: qwen.model.model.get_image_features(inputs["pixel_values"],
                                                                          inputs["image_grid_thw"]))
    formula = qwen.encoder_flops(inputs)
    assert abs(formula["vision"] + formula["projector"] - measured) <= FLOP_TOLERANCE * measured, (formula, measured)
    if type(qwen).__name__ == "Qwen2_5VLServer":
        vc = qwen.model.config.vision_config
        assert len(vc.fullatt_block_indexes) < vc.depth
        # Counting every block as full attention would be off by far more than any tolerance.
        windowed = [b for b in range(vc.depth) if b not in vc.fullatt_block_indexes]
        assert full_attention_flops(qwen, inputs) * len(windowed) / vc.depth > 0.01 * measured


def test_continued_prefix_answers_as_the_whole_prompt(qwen):
    """Stage 2 from stage 1's cached keys and values: the crop alone is encoded (for Qwen3-VL
    with its DeepStack features) and the answer is the one of the whole two-image prompt."""
    first = noise(*qwen.frame((0.0, 0.0, 500.0, 300.0))[1], seed=2)
    crop = noise(224, 224, seed=3)
    limits = Limits(max_new_tokens=6)
    stage1 = qwen.answer([first], "what is the number ?", limits, with_attention=False, keep_prefix=True)
    continued = qwen.answer([first, crop], "what is the number ?", limits, with_attention=False, prefix=stage1.prefix)
    whole = qwen.answer([first, crop], "what is the number ?", limits, with_attention=False)
    assert continued.tokens == whole.tokens and continued.text.strip()
    torch.testing.assert_close(continued.logits, whole.logits, rtol=1e-4, atol=1e-4)
    assert continued.flops["vision"] < whole.flops["vision"]  # the cached first image is not encoded again


def test_stage2_batched_from_cached_prefixes_answers_as_alone(qwen):
    """Two stage-2 rows, each continued from its own stage-1 cache, in one padded generate
    (the pre-encoded crops concatenated: for Qwen3-VL with their DeepStack features): the
    answers each row gives alone. Called directly, not through the pipeline, whose fallback
    would answer each alone if the batched pass failed."""
    limits = Limits(max_new_tokens=5)
    rows = []
    for seed, (w, h) in enumerate([(500, 300), (260, 400)]):
        image = noise(*qwen.frame((0.0, 0.0, float(w), float(h)))[1], seed=seed)
        stage1 = qwen.answer([image], "what is written ?", limits, with_attention=False, keep_prefix=True)
        rows.append(([image, noise(224, 168, seed=10 + seed)], stage1.prefix))
    batched = qwen.answer_batch([(images, "what is written ?") for images, _ in rows], limits, with_attention=False,
                                prefixes=[prefix for _, prefix in rows])
    for (images, prefix), answer in zip(rows, batched):
        alone = qwen.answer(images, "what is written ?", limits, with_attention=False, prefix=prefix)
        assert answer.tokens == alone.tokens and answer.flops == alone.flops
