"""Locators (collab_eval.locators): the registry, the built-ins' values against direct
computations, ViCrop's tiling, and what a locator's passes cost."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from collab_eval import flops as flop_counts
from collab_eval.builtin_locators import block_mean, gradient_map, high_pass
from collab_eval.edge import Codec, transmit
from collab_eval.locators import installed, stitch, tile_boxes
from collab_eval.model_args import ModelArgError
from collab_eval.pipeline import Limits, Method
from collab_eval.policy import Policy
from collab_eval.roi import find_roi
from model_adapters.instructblip import run_qformer
from tests.helpers import FAMILIES, check_record, qwen2_vl_kind, run_one

QUESTION = "what is the number on the sign ?"
LIMITS = Limits(max_new_tokens=4)


def method(locator: str, highres: bool = False) -> Method:
    return Method(Policy("always", -math.inf, 0.5, 0), Codec.parse("png"), locator=locator, highres=highres)


def noise(width, height, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


# ----- the registry ---------------------------------------------------------------------------
def test_builtins_are_registered_as_entry_points():
    assert {"rel_att", "grad_att", "pure_grad", "center"} <= set(installed())


def test_an_unknown_locator_fails_before_loading_listing_the_installed_ones(tmp_path):
    from model_adapters.llava import CollabLlava
    empty = tmp_path / "empty-checkpoint"
    empty.mkdir()  # had the adapter tried to load it, transformers would raise its own error
    with pytest.raises(ModelArgError, match=r"collab_llava: locator must be one of the installed locators "
                                            r"\['center', 'grad_att', 'pure_grad', 'rel_att'.*\].*got 'nope'"):
        CollabLlava(pretrained=str(empty), records_dir=str(tmp_path / "records"), locator="nope")
    with pytest.raises(ModelArgError, match=r"highres=true tiles a map locator's maps; locator=center returns a box"):
        CollabLlava(pretrained=str(empty), records_dir=str(tmp_path / "records"), locator="center", highres="true")
    assert not (tmp_path / "records").exists()  # refused before records_dir is created


# ----- center --------------------------------------------------------------------------------
def test_center_is_the_base_window_at_the_centre(tiny_server):
    server = tiny_server("llava")
    side = server.input_side
    assert side % 2 == 0
    out = run_one(server, [noise(400, 300)], QUESTION, method=method("center"), limits=LIMITS)
    assert out.roi == [200 - side // 2, 150 - side // 2, 200 + side // 2, 150 + side // 2]
    assert out.flops["locate"] == out.flops["generic"] == 0 and not out.generic_cached
    check_record(out, method("center"), server.name)


# ----- grad_att ------------------------------------------------------------------------------
def eager_copy(server):
    """The same checkpoint with eager attention: its attention probabilities are outputs,
    differentiable, as ViCrop's code reads them."""
    return type(server.model).from_pretrained(server.model.name_or_path, attn_implementation="eager",
                                              dtype=torch.float32).eval()


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "instructblip"])  # its map: two attentions
def test_grad_att_is_attention_times_relu_of_its_gradient(family, tiny_server):
    """Against a direct autograd computation on the eager model: attention at the map layer
    times ReLU of d log p(top token) / d attention, head-averaged, last row, image tokens."""
    server = tiny_server(family)
    image = noise(90, 70, seed=3)
    grid, flops = server.gradient_attention(image, QUESTION)
    inputs = server.inputs([image], QUESTION)
    out = eager_copy(server)(**inputs, output_attentions=True, use_cache=False)
    attention = out.attentions[server.layer]
    (grad,) = torch.autograd.grad(torch.log_softmax(out.logits[0, -1], dim=-1).max(), attention)
    row = (attention * grad.clamp(min=0))[0, :, -1].mean(dim=0).detach()
    expected = server.patch_grid(row[server.image_token_positions(inputs, 0)].numpy(), inputs, 0)
    assert grid.shape == expected.shape == server.map_shape(inputs)
    assert expected.max() > 0
    np.testing.assert_allclose(grid, expected, rtol=1e-4, atol=1e-7 * expected.max())


def test_instructblip_grad_att_weights_qformer_and_language_model(tiny_server):
    """InstructBLIP: the LM row's grad-weighted attention to the 32 query slots, pushed
    through the Q-Former's grad-weighted cross-attention (both from one backward)."""
    server = tiny_server("instructblip")
    image = noise(60, 50, seed=4)
    grid, _ = server.gradient_attention(image, QUESTION)
    model = eager_copy(server)
    inputs = server.gradient_inputs([image], QUESTION)
    # The model's forward as its get_image_features runs it, with every attention returned.
    _, qformer = run_qformer(model, inputs, output_attentions=True)
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    slots = model.get_placeholder_mask(inputs["input_ids"], inputs_embeds=embeds)
    features = model.language_projection(qformer.last_hidden_state[:, :server.queries])
    out = model.language_model(inputs_embeds=embeds.masked_scatter(slots, features),
                               attention_mask=inputs["attention_mask"], output_attentions=True, use_cache=False)
    cross = qformer.cross_attentions[server.qformer_layer]
    lm = out.attentions[server.layer]
    target = torch.log_softmax(out.logits[0, -1], dim=-1).max()
    cross_grad, lm_grad = torch.autograd.grad(target, [cross, lm])
    cross_map = (cross * cross_grad.clamp(min=0))[0].mean(dim=0)[:, 1:]  # (32 queries, patches)
    lm_row = (lm * lm_grad.clamp(min=0))[0, :, -1].mean(dim=0)[server.image_token_positions(inputs, 0)]
    expected = (lm_row @ cross_map).detach().numpy().reshape(server.grid)
    assert expected.max() > 0
    np.testing.assert_allclose(grid, expected, rtol=1e-4, atol=1e-7 * expected.max())


def test_grad_att_flops_are_its_forward_and_backward(tiny_server):
    """The counted FLOPs of a grad_att pass equal, within 2%, the analytic count: the forward
    (encoder, prefill to one next token, the probe's row and its weighted sum again) and
    the backward from the top token's log-probability to the map layer's probabilities:
    activations only (frozen weights), LM head row, every layer after the map layer
    (linear layers as their forward, attention 2.5 times its forward, as torch counts SDPA's
    backward), the map layer's output projection and MLP, and the probed row's product."""
    server = tiny_server("llava")
    image = noise(90, 70, seed=5)
    _, counted = server.gradient_attention(image, QUESTION)
    inputs = server.inputs([image], QUESTION)
    tc = server.language_config()
    tokens, heads = inputs["input_ids"].shape[1], tc.num_attention_heads
    head_dim = tc.hidden_size // heads
    q_dim, kv_dim = heads * head_dim, tc.num_key_value_heads * head_dim
    row = 2 * tokens * heads * head_dim  # one query's scores, or one row's weighted sum of values
    forward = sum(server.flops(inputs, generated=1).values()) + 2 * row
    linear, attention = flop_counts.linear, flop_counts.attention_core
    mlp = 3 * linear(tokens, tc.hidden_size, tc.intermediate_size)
    projections = linear(tokens, tc.hidden_size, q_dim) + 2 * linear(tokens, tc.hidden_size, kv_dim)
    after = tc.num_hidden_layers - server.layer - 1
    backward = (linear(1, tc.vocab_size, tc.hidden_size)
                + after * (projections + linear(tokens, q_dim, tc.hidden_size) + mlp
                           + attention(tokens, tokens, heads, head_dim) * 5 // 2)
                + linear(tokens, q_dim, tc.hidden_size) + mlp + row)
    assert abs(counted - (forward + backward)) <= 0.02 * counted, (counted, forward, backward)
    assert backward > 0.2 * forward  # the backward is counted, not only the forward


# ----- pure_grad -----------------------------------------------------------------------------
def test_pixel_gradient_is_the_gradient_of_the_top_token_log_probability(tiny_server):
    server = tiny_server("llava")
    image = noise(70, 90, seed=6)
    (grad, shape), flops = server.pixel_gradient(image, QUESTION)
    inputs = server.inputs([image], QUESTION)
    pixels = inputs["pixel_values"].clone().requires_grad_()
    logits = server.model(**{**inputs, "pixel_values": pixels}).logits[0, -1]
    (expected,) = torch.autograd.grad(torch.log_softmax(logits, dim=-1).max(), pixels)
    np.testing.assert_allclose(grad, expected[0].permute(1, 2, 0).numpy(), rtol=1e-4, atol=1e-9)
    assert shape == server.grid and flops > sum(server.flops(inputs, generated=1).values())


@pytest.mark.parametrize("family", qwen2_vl_kind())  # Qwen2-VL, Qwen2.5-VL: 14 px patches, Qwen3-VL: 16
def test_qwen2_vl_pixel_layout_undoes_the_processors_patch_order(family, tiny_server):
    """pixel_values of a known image, laid back out as (height, width, channels), are the
    normalised image (summed over the two temporal copies of a still image)."""
    server = tiny_server(family)
    region, (width, height) = server.frame((0, 0, 80, 60))
    image = noise(width, height, seed=7)
    inputs = server.inputs([image], QUESTION)
    laid_out = server.pixel_layout(inputs["pixel_values"].float().cpu(), inputs)
    ip = server.processor.image_processor
    normalised = (np.asarray(image, dtype=np.float32) / 255 - np.array(ip.image_mean)) / np.array(ip.image_std)
    np.testing.assert_allclose(laid_out, 2 * normalised, atol=1e-4)


def test_gradient_map_finds_a_planted_hot_patch():
    """Patch (2, 3) of a 4x6 grid of 8-pixel patches has ten times the question's gradient
    elsewhere (the generic prompt's is flat); the image is detailed everywhere, so the
    high-pass mask keeps about half of every patch."""
    image = noise(48, 32, seed=8)
    asked = np.ones((32, 48, 3), dtype=np.float32)
    asked[16:24, 24:32] *= 10
    grid = gradient_map(asked, np.ones_like(asked), image, (4, 6))
    assert grid.shape == (4, 6) and np.unravel_index(grid.argmax(), grid.shape) == (2, 3)
    detail = high_pass(image, (48, 32))
    assert grid[2, 3] == pytest.approx(10 * (detail[16:24, 24:32] > np.median(detail)).mean())
    np.testing.assert_allclose(block_mean(np.arange(16.0).reshape(4, 4), (2, 2)), [[2.5, 4.5], [10.5, 12.5]])


# ----- highres -------------------------------------------------------------------------------
def test_tiles_stay_under_1024_keeping_the_aspect_ratio():
    assert tile_boxes((800, 600)) == [(0.0, 0.0, 800.0, 600.0)]
    assert tile_boxes((2000, 1000)) == [(0.0, 0.0, 1000.0, 1000.0), (1000.0, 0.0, 2000.0, 1000.0)]
    tall = tile_boxes((900, 2500))
    assert len(tall) == 3 and all(b[2] - b[0] <= 1024 and b[3] - b[1] <= 1024 for b in tall)


def test_stitched_tiles_put_a_planted_hot_spot_where_it_is():
    """Two tiles of a 2000 x 1000 original, each mapped on an 8 x 8 grid over its whole
    tile; the hot cell is the right tile's (row 2, column 5): original pixels 1625-1750, 250-375."""
    left, right = np.ones((8, 8)), np.ones((8, 8))
    right[2, 5] = 50
    grid, region = stitch([left, right], tile_boxes((2000, 1000)))
    assert grid.shape == (8, 16) and region == (0.0, 0.0, 2000.0, 1000.0)
    assert np.unravel_index(grid.argmax(), grid.shape) == (2, 13)
    x0, y0, x1, y1 = find_roi(grid, region, (2000, 1000), side=125)
    assert x0 <= 1625 and 1750 <= x1 and y0 <= 250 and 375 <= y1


def test_highres_maps_tiles_sent_by_the_edge_and_counts_them(tiny_server):
    server = tiny_server("llava")
    small, large = noise(300, 200, seed=9), noise(1500, 600, seed=10)
    plain = run_one(server, [small], QUESTION, method=method("rel_att"), limits=LIMITS)
    same = run_one(server, [small], QUESTION, method=method("rel_att", highres=True), limits=LIMITS)
    assert same.roi == plain.roi and same.flops == plain.flops and same.bytes_tiles == 0  # one tile: the global
    out = run_one(server, [large], QUESTION, method=method("grad_att", highres=True), limits=LIMITS)
    tiles = [transmit(large, *server.frame(box), Codec.parse("png")) for box in tile_boxes(large.size)]
    assert len(tiles) == 2 and out.bytes_tiles == sum(tile.nbytes for tile in tiles)
    assert out.bytes_total == out.bytes_global + out.bytes_request + out.bytes_local + out.bytes_tiles
    assert out.flops["locate"] == sum(server.gradient_attention(tile.image, QUESTION)[1] for tile in tiles)
    check_record(out, method("grad_att", highres=True), server.name)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("locator", ["rel_att", "grad_att", "pure_grad"])
def test_highres_tiles_the_original_for_every_family_and_map_locator(family, locator, tiny_server):
    # An original over 1024 px (2 rows of 3 tiles under ViCrop's rule): its tiles are sent and
    # counted, every pass over them is locate's, and stage 1, the locator's input, is what it is
    # without highres.
    server = tiny_server(family)
    large = noise(2100, 1300, seed=3)
    out = run_one(server, [large], QUESTION, method=method(locator, highres=True), limits=LIMITS)
    check_record(out, method(locator, highres=True), server.name)
    tiles = tile_boxes(large.size)
    assert len(tiles) == 6 and out.bytes_tiles == sum(transmit(large, *server.frame(box), Codec.parse("png")).nbytes
                                                       for box in tiles)
    assert out.flops["locate"] > 0 and out.flops["generic"] == 0
    plain = run_one(server, [large], QUESTION, method=method(locator), limits=LIMITS)
    assert out.answer_stage1 == plain.answer_stage1 and out.scores == plain.scores
