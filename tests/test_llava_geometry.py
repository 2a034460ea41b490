"""LLaVA's patch grid maps back to the right ORIGINAL pixels, through the processor's
own short-edge resize and centre crop, on square and non-square images."""
import numpy as np
import pytest
from PIL import Image, ImageDraw

from collab_eval.edge import Codec, transmit
from collab_eval.roi import find_roi


@pytest.fixture(scope="module")
def llava(tiny_server):
    return tiny_server("llava")


def hot_cell(pixel_values: np.ndarray, patch: int) -> tuple[int, int]:
    """The patch with the brightest mean in a processor's (3, H, W) output."""
    brightness = pixel_values.mean(axis=0)
    h, w = brightness.shape
    cells = brightness.reshape(h // patch, patch, w // patch, patch).mean(axis=(1, 3))
    return np.unravel_index(np.argmax(cells), cells.shape)


@pytest.mark.parametrize("size, spot", [
    ((256, 256), (180, 60)),    # square
    ((400, 200), (250, 150)),   # landscape: the processor crops the sides
    ((150, 330), (40, 200)),    # portrait: the processor crops top and bottom
])
def test_planted_spot_maps_back_to_its_original_pixels(llava, size, spot):
    image = Image.new("RGB", size, (0, 0, 0))
    half = max(size) // 40 + 2
    ImageDraw.Draw(image).rectangle((spot[0] - half, spot[1] - half, spot[0] + half, spot[1] + half),
                                    fill=(255, 255, 255))

    # What the real processor makes of the ORIGINAL image: which cell lights up.
    processed = llava.processor.image_processor(image, return_tensors="np")["pixel_values"][0]
    row, col = hot_cell(processed, llava.patch)

    # The same cell must light up in what the edge sends (our framing of the processor).
    region, view_size = llava.frame((0.0, 0.0, float(size[0]), float(size[1])))
    sent = transmit(image, region, view_size, Codec.parse("png"))
    sent_processed = llava.processor.image_processor(sent.image, return_tensors="np")["pixel_values"][0]
    assert hot_cell(sent_processed, llava.patch) == (row, col)

    # Attention planted on that cell gives a box around the spot in original pixels.
    att = np.ones(llava.grid)
    att[row, col] = 100.0
    box = find_roi(att, region, size, llava.input_side)
    assert box[0] <= spot[0] <= box[2] and box[1] <= spot[1] <= box[3], (box, spot)
    # And the cell's centre is within one cell of the spot.
    cell_w = (region[2] - region[0]) / llava.grid[1]
    cell_h = (region[3] - region[1]) / llava.grid[0]
    centre = (region[0] + (col + 0.5) * cell_w, region[1] + (row + 0.5) * cell_h)
    assert abs(centre[0] - spot[0]) <= cell_w and abs(centre[1] - spot[1]) <= cell_h


def test_frame_of_a_non_square_image_is_the_central_square(llava):
    region, view = llava.frame((0.0, 0.0, 400.0, 200.0))
    assert region == pytest.approx((100.0, 0.0, 300.0, 200.0))
    assert view == (llava.input_side, llava.input_side)
