"""Qwen2-VL's merged patch grid maps back to the right ORIGINAL pixels, through the
processor's own smart_resize inside the pixel budget, on square and non-square images;
and each image's tokens are found exactly, also when two images have different grids."""
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from collab_eval.edge import Codec, transmit
from collab_eval.pipeline import Limits
from collab_eval.roi import find_roi

MAX_PIXELS = 336 * 336


@pytest.fixture(scope="module")
def qwen(tiny_server):
    return tiny_server("qwen2_vl", max_pixels=MAX_PIXELS)


def painted(size, spot, half):
    image = Image.new("RGB", size, (0, 0, 0))
    ImageDraw.Draw(image).rectangle((spot[0] - half, spot[1] - half, spot[0] + half, spot[1] + half),
                                    fill=(255, 255, 255))
    return image


def hot_cell(qwen, image):
    """Process ``image`` as the model would; the brightest language-model token, placed on
    the grid by the adapter's patch_grid. Rows of pixel_values come in token order, one
    token per merge x merge consecutive rows (the processor's own patch layout)."""
    inputs = qwen.processor.image_processor(image, return_tensors="pt")
    per_token = inputs["pixel_values"].reshape(-1, qwen.merge ** 2 * inputs["pixel_values"].shape[1]).mean(dim=1)
    grid = qwen.patch_grid(per_token.numpy(), inputs, image_index=0)
    return np.unravel_index(np.argmax(grid), grid.shape), grid.shape, inputs["image_grid_thw"][0].tolist()


@pytest.mark.parametrize("size, spot", [
    ((500, 500), (380, 110)),   # square, over the budget: shrunk to 336 x 336
    ((900, 300), (700, 220)),   # landscape, over the budget
    ((210, 650), (60, 500)),    # portrait, over the budget
    ((250, 130), (50, 90)),     # under the budget: rounded to multiples of 28 only
])
def test_planted_spot_maps_back_to_its_original_pixels(qwen, size, spot):
    image = painted(size, spot, half=max(size) // 60 + 2)

    # What the real processor makes of the ORIGINAL image: which cell lights up.
    cell, shape, grid_thw = hot_cell(qwen, image)
    assert shape[0] * shape[1] * qwen.factor ** 2 <= MAX_PIXELS

    # What the edge sends is exactly the size the processor keeps: the same grid, the same cell.
    region, view_size = qwen.frame((0.0, 0.0, float(size[0]), float(size[1])))
    assert region == (0.0, 0.0, float(size[0]), float(size[1]))
    sent = transmit(image, region, view_size, Codec.parse("png"))
    sent_cell, sent_shape, sent_grid = hot_cell(qwen, sent.image)
    assert sent_grid == grid_thw and sent_shape == shape and sent_cell == cell
    assert view_size == (shape[1] * qwen.factor, shape[0] * qwen.factor)

    # The aspect ratio is kept as closely as the 28-pixel rounding allows.
    assert (abs(view_size[0] / view_size[1] - size[0] / size[1])
            <= (size[0] / size[1]) * 2 * qwen.factor / min(view_size))

    # Attention planted on that cell gives a box around the spot in original pixels.
    att = np.ones(shape)
    att[cell] = 100.0
    box = find_roi(att, region, size, qwen.input_side)
    assert box[0] <= spot[0] <= box[2] and box[1] <= spot[1] <= box[3], (box, spot)
    cell_w, cell_h = size[0] / shape[1], size[1] / shape[0]
    centre = ((cell[1] + 0.5) * cell_w, (cell[0] + 0.5) * cell_h)
    assert abs(centre[0] - spot[0]) <= cell_w and abs(centre[1] - spot[1]) <= cell_h


def test_each_image_tokens_are_located_exactly_with_different_grids(qwen):
    """Global and crop with different grids in one prompt: each image's positions carry
    exactly that image's features in what the language model receives."""
    first = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 700, 3), dtype=np.uint8))
    second = Image.fromarray(np.random.default_rng(1).integers(0, 256, (336, 336, 3), dtype=np.uint8))
    images = [first.resize(qwen.frame((0.0, 0.0, 700.0, 300.0))[1]), second]
    inputs = qwen.inputs(images, "what is the number on the sign ?")
    grids = inputs["image_grid_thw"].tolist()
    assert grids[0] != grids[1]

    seen = {}

    def keep(module, args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"]

    hook = qwen.model.model.language_model.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        with torch.inference_mode():
            qwen.model(**inputs)
    finally:
        hook.remove()

    ids = inputs["input_ids"][0].tolist()
    start_token = qwen.model.config.vision_start_token_id
    end_token = qwen.model.config.vision_end_token_id
    starts = [i for i, t in enumerate(ids) if t == start_token]
    ends = [i for i, t in enumerate(ids) if t == end_token]
    for index, (image, (t, h, w)) in enumerate(zip(images, grids)):
        positions = qwen.image_token_positions(inputs, image_index=index).tolist()
        assert positions == list(range(starts[index] + 1, ends[index]))  # the whole run between the markers
        assert len(positions) == t * h * w // qwen.merge ** 2
        alone = qwen.processor.image_processor(image, return_tensors="pt")
        with torch.inference_mode():
            features = qwen.model.get_image_features(alone["pixel_values"], alone["image_grid_thw"]).pooler_output[0]
        torch.testing.assert_close(seen["embeds"][0, positions], features, rtol=1e-4, atol=1e-5)


def test_attention_grid_is_the_first_images_merged_grid(qwen):
    image = Image.new("RGB", qwen.frame((0.0, 0.0, 640.0, 200.0))[1], (90, 20, 200))
    answer = qwen.answer([image, Image.new("RGB", (336, 336))], "is there a red square ?", Limits(max_new_tokens=2),
                         with_attention=True)
    _, h, w = qwen.processor.image_processor(image, return_tensors="pt")["image_grid_thw"][0].tolist()
    assert answer.attentions[0].shape == (h // qwen.merge, w // qwen.merge)
    assert np.isfinite(answer.attentions[0]).all() and answer.attentions[0].sum() > 0


def test_pixel_budget_is_a_model_arg_and_is_checked(qwen, tiny_server, tiny_qwen2_vl_path, tmp_path):
    from model_adapters.qwen2_vl import CollabQwen2VL
    assert qwen.input_side == 336
    # The processor itself applies the budget: an original sent as is gets the framed grid.
    _, (w, h) = qwen.frame((0.0, 0.0, 900.0, 300.0))
    grid = qwen.inputs([Image.new("RGB", (900, 300))], "q")["image_grid_thw"][0].tolist()
    assert grid == [1, h // 14, w // 14] and w * h <= MAX_PIXELS
    small = tiny_server("qwen2_vl", max_pixels=112 * 112)
    region, size = small.frame((0.0, 0.0, 1000.0, 1000.0))
    assert size == (112, 112) and small.input_side == 112
    with pytest.raises(ValueError, match="min_pixels <= max_pixels"):
        CollabQwen2VL(pretrained=tiny_qwen2_vl_path, max_pixels=100, records_dir=str(tmp_path))
    with pytest.raises(ValueError, match="unknown model arg"):
        CollabQwen2VL(pretrained=tiny_qwen2_vl_path, max_pixel=100, records_dir=str(tmp_path))
