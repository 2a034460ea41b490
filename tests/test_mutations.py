"""Fast tests written to kill the mutants mutmut found surviving in the arithmetic of the RoI box,
the gate, the curves and latency (docs/development.md, "Mutation testing"): each compares the code
with an independent, naive computation of the documented rule, on inputs that keep every term
visible (regions not at the origin, non-square grids and images, ties avoided)."""
import math

import numpy as np
import pytest

from collab_eval.policy import Policy, uniform
from collab_eval.roi import FLAT, RATIOS, find_roi, relative_attention, square_box


# ----- the RoI box: ViCrop's window search, naively ---------------------------------------------
def naive_square_box(cx, cy, size, image_size):
    width, height = image_size
    w, h = min(size, width), min(size, height)
    x0 = int(round(min(max(cx - w / 2, 0.0), width - w)))
    y0 = int(round(min(max(cy - h / 2, 0.0), height - h)))
    return (x0, y0, max(x0 + 1, min(width, int(round(x0 + w)))), max(y0 + 1, min(height, int(round(y0 + h)))))


def naive_find_roi(att, region, image_size, side):
    """docs/method.md's search with loops: per window size (ratio of ``side``, in cells, clipped to
    the grid) the position of the largest sum; its sharpness is its sum minus the mean of its
    (up to four) neighbouring positions' sums, per cell; the sharpest size wins (first on ties);
    none sharp (or one window covering the map): the centre, at the first ratio."""
    att = np.nan_to_num(np.asarray(att, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    rows, cols = att.shape
    cell_w, cell_h = (region[2] - region[0]) / cols, (region[3] - region[1]) / rows
    best = None
    for ratio in RATIOS:
        bw = min(max(int(side * ratio / cell_w), 1), cols)
        bh = min(max(int(side * ratio / cell_h), 1), rows)
        if bw == cols and bh == rows:
            continue
        sums = np.array([[att[j:j + bh, i:i + bw].sum() for i in range(cols - bw + 1)]
                         for j in range(rows - bh + 1)])
        y, x = np.unravel_index(np.argmax(sums), sums.shape)
        around = [sums[j, i] for j, i in ((y, x - 1), (y, x + 1), (y - 1, x), (y + 1, x))
                  if 0 <= j < sums.shape[0] and 0 <= i < sums.shape[1]]
        sharpness = (sums[y, x] - np.mean(around)) / (bw * bh)
        if sharpness <= FLAT * abs(sums[y, x]) / (bw * bh):
            sharpness = 0.0
        if best is None or sharpness > best[0]:
            best = (sharpness, ratio, region[0] + (x + bw / 2) * cell_w, region[1] + (y + bh / 2) * cell_h)
    width, height = image_size
    if best is None or best[0] <= 0:
        return naive_square_box(width / 2, height / 2, side * RATIOS[0], image_size)
    return naive_square_box(best[2], best[3], side * best[1], image_size)


@pytest.mark.parametrize("seed", range(40))
def test_find_roi_equals_the_naive_search_on_random_maps_and_offset_regions(seed):
    rng = np.random.default_rng(seed)
    rows, cols = int(rng.integers(3, 13)), int(rng.integers(3, 13))
    width, height = int(rng.integers(300, 3000)), int(rng.integers(300, 3000))
    x0, y0 = float(rng.uniform(0, width / 3)), float(rng.uniform(0, height / 3))
    region = (x0, y0, float(rng.uniform(x0 + 50, width)), float(rng.uniform(y0 + 50, height)))
    side = float(rng.uniform(20, 400))
    att = rng.gamma(0.3, size=(rows, cols))  # peaky: a clear winner, no ties
    att[rng.integers(rows), rng.integers(cols)] += float(rng.uniform(1, 20))
    assert find_roi(att, region, (width, height), side) == naive_find_roi(att, region, (width, height), side)


def test_find_roi_picks_the_sharpest_size_and_centres_its_window_in_an_offset_region():
    """A 3 x 3 block of heat on an 8 x 12 grid over (100, 50)-(700, 450) of a 900 x 600 image,
    cells 50 x 50 px: the box is centred on the block, square, of a ratio's size."""
    att = np.zeros((8, 12))
    att[2:5, 6:9] = 1.0
    box = find_roi(att, (100.0, 50.0, 700.0, 450.0), (900, 600), side=100.0)
    assert box == naive_find_roi(att, (100.0, 50.0, 700.0, 450.0), (900, 600), side=100.0)
    # The heat's centre: x = 100 + 7.5 * 50 = 475, y = 50 + 3.5 * 50 = 225.
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    assert abs(cx - 475) <= 1 and abs(cy - 225) <= 1
    assert box[2] - box[0] == box[3] - box[1] and box[2] - box[0] in [round(100 * r) for r in RATIOS]


def test_find_roi_ignores_infinite_and_nan_cells_as_zero():
    att = np.ones((6, 6))
    att[1, 1] = 50.0
    with_bad = att.copy()
    with_bad[4, 4], with_bad[0, 5], with_bad[5, 0] = np.inf, -np.inf, np.nan
    plain = att.copy()
    plain[4, 4] = plain[0, 5] = plain[5, 0] = 0.0
    region = (0.0, 0.0, 600.0, 600.0)
    assert find_roi(with_bad, region, (600, 600), 100.0) == find_roi(plain, region, (600, 600), 100.0)


def test_a_window_clipped_to_the_grid_still_counts_one_cell_at_least():
    # side much smaller than a cell: every window is one cell (clipped up to 1), not 2
    att = np.zeros((4, 5))
    att[3, 0] = 1.0
    box = find_roi(att, (0.0, 0.0, 500.0, 400.0), (500, 400), side=10.0)
    assert box == naive_find_roi(att, (0.0, 0.0, 500.0, 400.0), (500, 400), side=10.0)
    assert box[0] <= 50 <= box[2] and box[1] <= 350 <= box[3]


@pytest.mark.parametrize("args", [(5, 5, 336, (1000, 800)), (995, 795, 336, (1000, 800)),
                                  (500.4, 300.6, 101, (1000, 800)), (20, 10, 336, (40, 30)), (0, 0, 0.2, (1, 1)),
                                  (333.3, 10.5, 77.7, (400, 90))])
def test_square_box_equals_the_naive_rule(args):
    assert square_box(*args) == naive_square_box(*args)


def test_maps_of_different_shapes_are_refused_naming_both():
    with pytest.raises(ValueError, match=r"attention maps differ in shape: \(2, 3\) vs \(3, 2\)"):
        relative_attention(np.ones((2, 3)), np.ones((3, 2)))
    assert relative_attention(np.array([[2.0]]), np.array([[0.0]]), eps=0.5)[0, 0] == 4.0
    assert relative_attention(np.array([[1.0]]), np.array([[1.0]]))[0, 0] == pytest.approx(1 / (1 + 1e-8), rel=1e-12)


# ----- the gate ----------------------------------------------------------------------------------
def test_tiles_always_retransmits_and_random_draws_below_the_rate():
    assert Policy("tiles").retransmit(-math.inf, "a") is True
    assert Policy("random", rate=0.0).retransmit(9.0, "a") is False
    assert Policy("random", rate=1.0).retransmit(-9.0, "a") is True
    key = "task/3"
    u = uniform(key, 5)
    assert Policy("random", rate=u, seed=5).retransmit(0.0, key) is False  # strictly below the rate
    assert Policy("random", rate=min(1.0, u + 1e-12), seed=5).retransmit(0.0, key) is True
    with pytest.raises(ValueError, match="rate must be in"):
        Policy("random", rate=1.5)
    with pytest.raises(ValueError, match="policy must be one of"):
        Policy("sometimes")
    assert Policy("threshold", 0.7, 0.2, 3).args() == {"threshold": 0.7, "rate": 0.2, "seed": 3}
    assert Policy("never").locates is False and Policy("tiles").locates is False and Policy("always").locates
