"""Where to look: ViCrop's relative attention and its adaptive sliding-window box search."""
from __future__ import annotations

import numpy as np

from collab_eval.edge import Box

# Window sides as multiples of the encoder input side, in original pixels (ViCrop's choice).
RATIOS = (1.0, 1.2, 1.4, 1.6, 1.8, 2.0)


FLAT = 1e-5  # relative: float32 maps computed in a different order differ by ~1e-7


def relative_attention(question_map: np.ndarray, generic_map: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """Attention the question draws beyond what any prompt draws to the same patches."""
    if question_map.shape != generic_map.shape:
        raise ValueError(f"attention maps differ in shape: {question_map.shape} vs {generic_map.shape}")
    return question_map / (generic_map + eps)


def window_sums(grid: np.ndarray, bh: int, bw: int) -> np.ndarray:
    """Sum of every bh x bw window of ``grid`` (all positions), via an integral image."""
    integral = np.pad(grid.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    return integral[bh:, bw:] - integral[:-bh, bw:] - integral[bh:, :-bw] + integral[:-bh, :-bw]


def find_roi(att: np.ndarray, region: Box, image_size: tuple[int, int], side: float,
             ratios: tuple[float, ...] = RATIOS) -> Box:
    """A square box (in original pixels) around the attention peak.

    ``att`` is a (rows, cols) map over ``region`` of the original image; ``side`` is the
    encoder input side in original pixels. For each window size the best position is the
    one with the largest attention sum; among sizes, the one whose best window stands out
    most from its four neighbouring positions (per cell) wins.
    """
    rows, cols = att.shape
    cell_w = (region[2] - region[0]) / cols
    cell_h = (region[3] - region[1]) / rows
    att = np.nan_to_num(att.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)

    best = None  # (sharpness, ratio, centre_x, centre_y)
    for ratio in ratios:
        bw = int(np.clip(side * ratio / cell_w, 1, cols))
        bh = int(np.clip(side * ratio / cell_h, 1, rows))
        if bw == cols and bh == rows:
            continue  # one window covers the whole map: nothing to choose
        sums = window_sums(att, bh, bw)
        y, x = np.unravel_index(np.argmax(sums), sums.shape)
        neighbours = [sums[j, i] for j, i in ((y, x - 1), (y, x + 1), (y - 1, x), (y + 1, x))
                      if 0 <= j < sums.shape[0] and 0 <= i < sums.shape[1]]
        sharpness = (sums[y, x] - np.mean(neighbours)) / (bw * bh)
        # A peak within float32 rounding of its neighbours is no peak: a map that is flat
        # in exact arithmetic must stay flat whatever order the model summed in (a batch).
        if sharpness <= FLAT * abs(sums[y, x]) / (bw * bh):
            sharpness = 0.0
        if best is None or sharpness > best[0]:
            cx = region[0] + (x + bw / 2) * cell_w
            cy = region[1] + (y + bh / 2) * cell_h
            best = (sharpness, ratio, cx, cy)

    width, height = image_size
    if best is None or best[0] <= 0:
        # The whole map fits one window, or the map is flat: no peak to follow, look at the centre.
        ratio, cx, cy = ratios[0], width / 2, height / 2
    else:
        _, ratio, cx, cy = best
    return square_box(cx, cy, side * ratio, image_size)


def square_box(cx: float, cy: float, size: float, image_size: tuple[int, int]) -> Box:
    """A size x size box centred as near (cx, cy) as the image allows, in whole pixels,
    shrunk to the image where the image is smaller, and never empty."""
    width, height = image_size
    w, h = min(size, width), min(size, height)
    x0 = min(max(cx - w / 2, 0.0), width - w)
    y0 = min(max(cy - h / 2, 0.0), height - h)
    x0, y0 = int(round(x0)), int(round(y0))
    x1 = max(x0 + 1, min(width, int(round(x0 + w))))
    y1 = max(y0 + 1, min(height, int(round(y0 + h))))
    return (x0, y0, x1, y1)
