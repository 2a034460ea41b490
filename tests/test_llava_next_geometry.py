"""LLaVA-NeXT ("anyres"): what the edge sends is what the processor uses (the original at the
pinpoint fit the processor selects, counted in bytes), each image's tokens are found exactly
(base view, stitched grid rows and newlines) also when two images have different layouts,
the map's cells map back to the right ORIGINAL pixels on non-square images, and the FLOPs of
the base view and tiles agree with FlopCounterMode."""
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from collab_eval.edge import Codec, transmit
from collab_eval.pipeline import Method
from collab_eval.policy import Policy
from collab_eval.roi import find_roi
from collab_eval.server_contract import GENERIC_PROMPT, Limits
from model_adapters.llava_next import anyres_layout, llava_next_frame, pinpoint_fit
from tests.helpers import run_one
from tests.test_flops import LIMITS, QUESTION, Parts, assert_agree, counted, noise_image

# llava-v1.6-vicuna-7b-hf's geometry: 336-px tiles, 14-px patches, these pinpoints.
PINPOINTS_7B = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
PARTS = Parts(vision=("model.vision_tower",), vision_minus=(), projector=("model.multi_modal_projector",),
              language=("model.language_model", "lm_head"), stepper="")


@pytest.fixture(scope="module")
def server(tiny_server):
    return tiny_server("llava_next")


def painted(size, spot, half):
    image = Image.new("RGB", size, (0, 0, 0))
    ImageDraw.Draw(image).rectangle((spot[0] - half, spot[1] - half, spot[0] + half, spot[1] + half),
                                    fill=(255, 255, 255))
    return image


def test_the_7b_sees_2928_tokens_for_672_by_672(server):
    """The issue's figure: 576 base + 48 x 48 grid + 48 newlines; and the layout's count is
    the one transformers' own processor writes into the prompt with the 7B's geometry."""
    from transformers import LlavaNextImageProcessor, LlavaNextProcessor
    layout = anyres_layout((672, 672), PINPOINTS_7B, tile=336, patch=14)
    assert (layout.tiles, layout.rows, layout.cols, layout.views, layout.tokens) == ((2, 2), 48, 48, 5, 2928)
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                                image_grid_pinpoints=PINPOINTS_7B),
        tokenizer=server.processor.tokenizer, patch_size=14, vision_feature_select_strategy="default",
        num_additional_image_tokens=1)
    image_token = server.model.config.image_token_id
    for width, height in ((672, 672), (1000, 500), (300, 900), (200, 150)):
        ids = processor(images=[noise_image(width, height, seed=0)], text="<image>", return_tensors="pt")["input_ids"]
        assert int((ids == image_token).sum()) == anyres_layout((height, width), PINPOINTS_7B, 336, 14).tokens
    # A wide original: the 336 x 672 (h x w) pinpoint fits 1000 x 500 best, all 24 rows kept.
    wide = anyres_layout((500, 1000), PINPOINTS_7B, tile=336, patch=14)
    assert wide.pinpoint == (336, 672) and (wide.rows, wide.cols) == (24, 48)
    assert pinpoint_fit(1000, 500, PINPOINTS_7B) == (672, 336)


@pytest.mark.parametrize("size", [(48, 40), (96, 96), (112, 112), (160, 96), (96, 200), (640, 480), (512, 128),
                                  (300, 500), (1000, 333), (333, 1000), (900, 901)])
def test_token_count_and_selected_pinpoint_survive_the_edge(server, size):
    """The processor picks the same pinpoint for what the edge sent as for the original, and
    the prompt holds exactly the layout's tokens (base view, grid, newlines)."""
    image = noise_image(*size, seed=sum(size))
    region, sent_size = server.frame((0.0, 0.0, float(size[0]), float(size[1])))
    assert region == (0.0, 0.0, float(size[0]), float(size[1]))
    sent = transmit(image, region, sent_size, Codec.parse("png")).image
    original, received = (anyres_layout((im.height, im.width), server.pinpoints, server.tile, server.patch)
                          for im in (image, sent))
    assert received.pinpoint == original.pinpoint and received.tiles == original.tiles
    assert abs(received.rows - original.rows) <= 1 and abs(received.cols - original.cols) <= 1
    # Never more pixels than the original: the fit when it shrinks, else the original's own size.
    assert sent_size == (pinpoint_fit(*size, server.pinpoints) if pinpoint_fit(*size, server.pinpoints)[0] < size[0]
                         else size)
    assert sent_size[0] * sent_size[1] <= size[0] * size[1]
    inputs = server.inputs([sent], QUESTION)
    n_image_tokens = int((inputs["input_ids"][0] == server.model.config.image_token_id).sum())
    assert n_image_tokens == received.tokens == len(server.image_token_positions(inputs, 0))


def test_bytes_are_the_payload_at_the_selected_pinpoint_fit(server):
    """Through the pipeline (never): bytes_global is the PNG of the original at the pinpoint
    fit the processor would resize it to (640 x 480 on the tiny 112-336 pinpoints: 224 x 168)."""
    image = noise_image(640, 480, seed=7)
    outcome = run_one(server, [image], QUESTION, method=Method(Policy("never"), Codec.parse("png")),
                      limits=Limits(max_new_tokens=2))
    payload = Codec.parse("png").encode(image.resize((224, 168), Image.Resampling.BICUBIC))
    assert server.frame((0.0, 0.0, 640.0, 480.0))[1] == (224, 168)
    assert outcome.bytes_global == len(payload) == outcome.bytes_total
    small = noise_image(48, 40, seed=8)  # under every pinpoint: sent as it is
    outcome = run_one(server, [small], QUESTION, method=Method(Policy("never"), Codec.parse("png")),
                      limits=Limits(max_new_tokens=2))
    assert outcome.bytes_global == len(Codec.parse("png").encode(small))


def packed_brightness(server, image):
    """Each language-model image token's brightness as the model itself packs it: every
    view's per-patch mean pixel through transformers' own pack_image_features (base view,
    tiles stitched and unpadded, newlines marked -inf)."""
    inputs = server.processor.image_processor(image, return_tensors="pt")
    views = inputs["pixel_values"][0]  # (views, channels, tile, tile)
    p = server.patch
    per_patch = views.mean(1).unfold(1, p, p).unfold(2, p, p).mean((-1, -2)).flatten(1)[..., None]
    packed, _ = server.model.model.pack_image_features([per_patch], inputs["image_sizes"], "default",
                                                       image_newline=torch.tensor([-float("inf")]))
    return packed[0][:, 0].numpy(), inputs


@pytest.mark.parametrize("size, spot", [
    ((700, 300), (560, 80)),   # wide, over every pinpoint: shrunk to the 112 x 336 fit, rows unpadded
    ((260, 640), (70, 520)),   # tall
    ((500, 500), (120, 380)),  # square, 224 x 224 (2 x 2 tiles)
    ((200, 90), (150, 45)),    # under the pinpoints: sent as it is, upsampled by the processor
])
def test_planted_spot_maps_back_to_its_original_pixels(server, size, spot):
    image = painted(size, spot, half=max(size) // 50 + 3)
    region, sent_size = server.frame((0.0, 0.0, float(size[0]), float(size[1])))
    sent = transmit(image, region, sent_size, Codec.parse("png")).image
    row, inputs = packed_brightness(server, sent)
    grid = server.patch_grid(row, inputs, image_index=0)
    assert np.isfinite(grid).all()  # the newlines are dropped, the base view too
    assert grid.shape == server.map_shape(inputs)
    cell = np.unravel_index(np.argmax(grid), grid.shape)
    # Attention planted on that cell gives a box around the spot in original pixels.
    att = np.ones(grid.shape)
    att[cell] = 100.0
    box = find_roi(att, region, size, server.input_side)
    assert box[0] <= spot[0] <= box[2] and box[1] <= spot[1] <= box[3], (box, spot)
    cell_w, cell_h = size[0] / grid.shape[1], size[1] / grid.shape[0]
    centre = ((cell[1] + 0.5) * cell_w, (cell[0] + 0.5) * cell_h)
    assert abs(centre[0] - spot[0]) <= 1.5 * cell_w and abs(centre[1] - spot[1]) <= 1.5 * cell_h, (centre, spot)


def test_each_image_tokens_are_located_exactly_with_different_layouts(server):
    """Global and crop with different layouts in one prompt: each image's positions carry
    exactly that image's packed features in what the language model receives."""
    images = [noise_image(*server.frame((0.0, 0.0, 700.0, 300.0))[1], seed=1), noise_image(90, 90, seed=2)]
    inputs = server.inputs(images, QUESTION)
    layouts = server.layouts(inputs)
    assert layouts[0].tokens != layouts[1].tokens
    seen = {}

    def keep(module, args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"]

    hook = server.model.model.language_model.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        with torch.inference_mode():
            server.model(**inputs)
    finally:
        hook.remove()
    for index, image in enumerate(images):
        positions = server.image_token_positions(inputs, image_index=index)
        alone = server.processor.image_processor(image, return_tensors="pt")
        with torch.inference_mode():
            features = server.model.model.get_image_features(alone["pixel_values"],
                                                             alone["image_sizes"]).pooler_output[0]
        torch.testing.assert_close(seen["embeds"][0, positions], features, rtol=1e-4, atol=1e-5)


def test_frame_keeps_the_whole_region_and_never_upsamples():
    pinpoints = [[112, 224], [224, 112], [224, 224], [336, 112], [112, 336]]
    assert llava_next_frame((10.0, 20.0, 710.0, 320.0), pinpoints) == ((10.0, 20.0, 710.0, 320.0), (262, 112))
    assert llava_next_frame((0.0, 0.0, 50.5, 30.2), pinpoints) == ((0.0, 0.0, 50.5, 30.2), (50, 30))


# ----- FLOPs of the base view, the tiles and the newlines, against FlopCounterMode (2%) ---------
@pytest.fixture(scope="module")
def family(server):
    return server, PARTS


WIDE, TALL, BIG = noise_image(300, 120, seed=11), noise_image(60, 150, seed=12), noise_image(500, 480, seed=13)


@pytest.mark.parametrize("images", [[BIG], [WIDE], [BIG, TALL], [WIDE, TALL, BIG]], ids=["big", "wide", "two", "three"])
def test_answer_flops_agree_with_flopcountermode(family, images):
    """The vision tower runs on the base view and every tile (also the ones unpadding cuts),
    the projector on each view's patches; the prompt holds base, grid and newline tokens."""
    answer, measured, forwards = counted(family, lambda: family[0].answer(images, QUESTION, LIMITS,
                                                                          with_attention=len(images) == 1))
    assert forwards == len(answer.logits)
    assert all(measured[part] > 0 for part in ("vision", "projector", "prefill"))
    assert_agree(answer.flops, measured)


def test_generic_and_stage2_passes_from_the_prefix_agree_with_flopcountermode(family):
    server = family[0]
    prefix = server.answer([BIG], QUESTION, LIMITS, with_attention=True, keep_prefix=True).prefix
    (_, flops), measured, _ = counted(family, lambda: server.attention(BIG, GENERIC_PROMPT, prefix=prefix))
    assert_agree(flops, measured)
    answer, measured, _ = counted(family, lambda: server.answer([BIG, TALL], QUESTION, LIMITS, with_attention=False,
                                                                prefix=prefix))
    assert_agree(answer.flops, measured)
    assert measured["vision"] < server.encoder_flops(server.inputs([BIG, TALL], QUESTION))["vision"]  # BIG not again


@pytest.mark.parametrize("locator", ["rel_att", "grad_att", "pure_grad", "center"])
def test_every_locator_crops_inside_the_original(server, locator):
    """policy=always with each built-in locator: a RoI inside the wide original, the crop sent
    at its own framing, and every byte and FLOP accounted (tests.helpers.check_record)."""
    from tests.helpers import check_record
    image = noise_image(640, 260, seed=21)
    method = Method(Policy("always"), Codec.parse("png"), locator=locator)
    outcome = run_one(server, [image], QUESTION, method=method, limits=Limits(max_new_tokens=2))
    check_record(outcome, method, server.name)
    x0, y0, x1, y1 = outcome.roi
    assert 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 <= 260
    crop = transmit(image, *server.frame(tuple(outcome.roi)), Codec.parse("png"))
    assert outcome.bytes_local == crop.nbytes
    assert (outcome.flops["locate"] > 0) == (locator in ("grad_att", "pure_grad"))
