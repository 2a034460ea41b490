"""InstructBLIP: the patch map (LM attention to the query slots through the Q-Former's
cross-attention) lands on the right cell of the vision encoder's patch layout, and that
cell maps back to the right ORIGINAL pixels through the processor's squash to 224 x 224,
on square and non-square images. Two images are two sets of query slots ahead of the text."""
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from collab_eval.edge import Codec, transmit
from collab_eval.pipeline import Limits
from collab_eval.roi import find_roi

QUESTION = "what is the number on the sign ?"


@pytest.fixture(scope="module")
def blip(tiny_server):
    return tiny_server("instructblip")


def hot_cell(pixel_values: np.ndarray, patch: int) -> tuple[int, int]:
    """The patch with the brightest mean in a processor's (3, H, W) output."""
    brightness = pixel_values.mean(axis=0)
    h, w = brightness.shape
    cells = brightness.reshape(h // patch, patch, w // patch, patch).mean(axis=(1, 3))
    return np.unravel_index(np.argmax(cells), cells.shape)


def hot_key(blip, pixel_values: torch.Tensor) -> int:
    """Which of the vision encoder's output positions (the Q-Former's cross-attention keys)
    carries the bright patch: the model's own patch embedding and layout, position
    embeddings taken out."""
    embeddings = blip.model.vision_model.embeddings
    with torch.inference_mode():
        tokens = embeddings(pixel_values.to(blip.model.dtype))[0] - embeddings.position_embedding[0]
    deviation = (tokens - tokens[1:].median(dim=0).values).norm(dim=-1)
    deviation[0] = 0  # the class token
    return int(deviation.argmax())


@pytest.mark.parametrize("size, spot", [
    ((256, 256), (184, 56)),    # square
    ((600, 200), (469, 156)),   # landscape: squashed horizontally, nothing cropped
    ((150, 330), (42, 278)),    # portrait: squashed vertically
])
def test_planted_spot_maps_back_to_its_original_pixels(blip, size, spot):
    """The spot (a third of a patch wide, near a patch centre) lights one patch only."""
    image = Image.new("RGB", size, (0, 0, 0))
    hx, hy = size[0] // 96 + 1, size[1] // 96 + 1
    ImageDraw.Draw(image).rectangle((spot[0] - hx, spot[1] - hy, spot[0] + hx, spot[1] + hy), fill=(255, 255, 255))
    patch = blip.model.config.vision_config.patch_size

    # What the real processor makes of the ORIGINAL image: which cell lights up.
    processed = blip.processor.image_processor(image, return_tensors="pt")["pixel_values"]
    row, col = hot_cell(processed[0].numpy(), patch)

    # The same cell lights up in what the edge sends (the whole region, squashed).
    region, view_size = blip.frame((0.0, 0.0, float(size[0]), float(size[1])))
    assert region == (0.0, 0.0, float(size[0]), float(size[1])) and view_size == (224, 224)
    sent = transmit(image, region, view_size, Codec.parse("png"))
    sent_processed = blip.processor.image_processor(sent.image, return_tensors="pt")["pixel_values"]
    assert hot_cell(sent_processed[0].numpy(), patch) == (row, col)

    # Queries that cross-attend only to the bright patch's key, and a language model that
    # attends evenly to the query slots: the patch map must light up that same cell.
    key = hot_key(blip, sent_processed)
    cross = torch.zeros(1, 2, blip.queries, 1 + blip.grid[0] * blip.grid[1])
    cross[..., key] = 1.0
    grid = blip.query_patch_map(np.full(blip.queries, 1.0 / blip.queries, dtype=np.float32), cross[0].mean(0))
    assert grid.shape == blip.grid
    assert np.unravel_index(np.argmax(grid), grid.shape) == (row, col)

    # Attention on that cell gives a box around the spot in original pixels.
    att = np.ones(blip.grid)
    att[row, col] = 100.0
    box = find_roi(att, region, size, blip.input_side)
    assert box[0] <= spot[0] <= box[2] and box[1] <= spot[1] <= box[3], (box, spot)
    cell_w, cell_h = size[0] / blip.grid[1], size[1] / blip.grid[0]
    centre = ((col + 0.5) * cell_w, (row + 0.5) * cell_h)
    assert abs(centre[0] - spot[0]) <= cell_w and abs(centre[1] - spot[1]) <= cell_h


def test_map_weights_patches_by_each_querys_share(blip):
    """Two queries, each on its own patch: the cell of the query the LM attends to more wins."""
    cross = torch.zeros(1, 2, blip.queries, 1 + blip.grid[0] * blip.grid[1])
    cross[0, :, 3, 1 + 5] = 1.0  # query 3 -> patch (0, 5)
    cross[0, :, 7, 1 + 2 * blip.grid[1] + 9] = 1.0  # query 7 -> patch (2, 9)
    row = np.zeros(blip.queries, dtype=np.float32)
    row[3], row[7] = 0.2, 0.6
    grid = blip.query_patch_map(row, cross[0].mean(0))
    assert grid[2, 9] == pytest.approx(0.6) and grid[0, 5] == pytest.approx(0.2) and grid.sum() == pytest.approx(0.8)


def test_two_images_are_two_sets_of_query_slots_ahead_of_the_text(blip):
    first = Image.fromarray(np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8))
    second = Image.fromarray(np.random.default_rng(1).integers(0, 256, (224, 224, 3), dtype=np.uint8))
    inputs = blip.inputs([first, second], QUESTION)
    ids = inputs["input_ids"][0].tolist()
    image_token = blip.model.config.image_token_id
    assert ids[:2 * blip.queries] == [image_token] * (2 * blip.queries)
    assert ids[2 * blip.queries] == blip.processor.tokenizer.bos_token_id and image_token not in ids[2 * blip.queries:]
    for index, image in enumerate((first, second)):
        positions = blip.image_token_positions(inputs, image_index=index)
        assert positions.tolist() == list(range(index * blip.queries, (index + 1) * blip.queries))
        alone = blip.inputs([image], QUESTION)  # the same image on its own: the same 32 embeddings
        torch.testing.assert_close(inputs["inputs_embeds"][0, positions], alone["inputs_embeds"][0, :blip.queries])


def test_answer_holds_only_generated_tokens(blip):
    """The language model's generate returns the prompt too; the answer is sliced after it."""
    image = Image.new("RGB", (300, 200), (200, 30, 30))
    inputs = blip.inputs([image], QUESTION)
    with torch.inference_mode():
        out = blip.generate(inputs, max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True)
    prompt = inputs["input_ids"].shape[1]
    assert out.sequences.shape[1] == prompt + len(out.logits)
    assert out.sequences[0, :prompt].tolist() == inputs["input_ids"][0].tolist()
    answer = blip.answer([image], QUESTION, Limits(max_new_tokens=3), with_attention=True)
    generated = out.sequences[0, prompt:]
    assert answer.text == blip.processor.tokenizer.decode(generated, skip_special_tokens=True).strip()
    assert answer.attentions[0].shape == blip.grid


def test_layers_are_model_args_scaled_from_vicrop(blip, tiny_instructblip_path, tmp_path):
    from model_adapters.instructblip import CollabInstructBlip
    # The tiny model: 3 LM layers (15/32 -> 1), 2 cross-attention layers (2/6 -> 0).
    assert (blip.layer, blip.qformer_layer) == (1, 0)
    other = CollabInstructBlip(pretrained=tiny_instructblip_path, layer=2, qformer_layer=1, records_dir=str(tmp_path))
    assert (other.server.layer, other.server.qformer_layer) == (2, 1)
    with pytest.raises(ValueError, match="qformer_layer"):
        CollabInstructBlip(pretrained=tiny_instructblip_path, qformer_layer=2, records_dir=str(tmp_path))
