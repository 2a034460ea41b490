"""The family-agnostic core on values that can be computed by hand."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from collab_eval.edge import Codec, encode_request, transmit
from collab_eval.policy import Policy, uniform
from collab_eval.roi import find_roi, relative_attention, square_box, window_sums
from collab_eval.uncertainty import aggregate, token_uncertainties


# ---- uncertainty -------------------------------------------------------------
def test_min_and_shannon_entropy_of_known_distributions():
    uniform4 = torch.zeros(4)  # p = 1/4 each
    peaked = torch.log(torch.tensor([0.7, 0.1, 0.1, 0.1]))
    u = token_uncertainties(torch.stack([uniform4, peaked]))
    assert u.min_entropy == pytest.approx([math.log(4), -math.log(0.7)], abs=1e-6)
    h = -(0.7 * math.log(0.7) + 3 * 0.1 * math.log(0.1))
    assert u.shannon_entropy == pytest.approx([math.log(4), h], abs=1e-6)
    assert u.score("max") == pytest.approx(math.log(4))
    assert u.score("first") == pytest.approx(math.log(4))
    assert u.score("mean") == pytest.approx((math.log(4) - math.log(0.7)) / 2)


def test_certain_token_has_zero_min_entropy_and_empty_answer_is_maximally_uncertain():
    certain = torch.tensor([[0.0, -1e4, -1e4]])
    assert token_uncertainties(certain).min_entropy[0] == pytest.approx(0.0, abs=1e-6)
    empty = token_uncertainties(torch.zeros(0, 5))
    assert empty.min_entropy == [] and empty.score("max") == math.inf
    with pytest.raises(ValueError, match="score aggregation"):
        aggregate([1.0], "median")


# ---- RoI ---------------------------------------------------------------------
def test_window_sums_match_brute_force():
    grid = np.arange(30, dtype=float).reshape(5, 6)
    sums = window_sums(grid, 2, 3)
    assert sums.shape == (4, 4)
    assert sums[1, 2] == grid[1:3, 2:5].sum()


def test_relative_attention_divides_out_the_generic_map():
    q = np.array([[2.0, 4.0], [1.0, 1.0]])
    g = np.array([[1.0, 4.0], [1.0, 0.5]])
    assert relative_attention(q, g) == pytest.approx(np.array([[2.0, 1.0], [1.0, 2.0]]), rel=1e-6)


@pytest.mark.parametrize("image_size, hot", [((1000, 1000), (700, 250)), ((1200, 600), (150, 480))])
def test_box_surrounds_a_planted_hot_spot(image_size, hot):
    rows, cols = 24, 24
    region = (0.0, 0.0, float(image_size[0]), float(image_size[1]))
    att = np.ones((rows, cols))
    r = int(hot[1] / image_size[1] * rows)
    c = int(hot[0] / image_size[0] * cols)
    att[r, c] = 50.0
    box = find_roi(att, region, image_size, side=336)
    assert box[0] <= hot[0] <= box[2] and box[1] <= hot[1] <= box[3]
    # A sharp single-cell peak picks the smallest window: the encoder's input side.
    assert box[2] - box[0] == 336 and box[3] - box[1] == 336


def test_box_is_clamped_inside_the_image_and_never_empty():
    assert square_box(5, 5, 336, (1000, 800)) == (0, 0, 336, 336)
    assert square_box(995, 795, 336, (1000, 800)) == (664, 464, 1000, 800)
    assert square_box(20, 10, 336, (40, 30)) == (0, 0, 40, 30)  # image smaller than a window
    assert square_box(0, 0, 0.2, (1, 1)) == (0, 0, 1, 1)


def test_flat_or_broken_attention_falls_back_to_the_centre():
    region = (0.0, 0.0, 1000.0, 1000.0)
    for att in (np.ones((24, 24)), np.full((24, 24), np.nan)):
        assert find_roi(att, region, (1000, 1000), side=336) == (332, 332, 668, 668)


def test_a_map_flat_up_to_float_rounding_is_flat_and_a_small_real_peak_is_not():
    """float32 rounding (a padded batch sums in another order) must not invent a peak; a
    peak of one part in ten thousand is still followed."""
    region = (0.0, 0.0, 1000.0, 1000.0)
    noise = 1 + np.random.default_rng(0).uniform(-1e-7, 1e-7, (24, 24))
    assert find_roi(noise, region, (1000, 1000), side=336) == (332, 332, 668, 668)
    peak = np.ones((24, 24))
    peak[2:10, 3:11] += 1e-3  # 8 x 8 cells: the smallest window (336 px of 1000 over 24 cells)
    cx, cy = 7 * 1000 / 24, 6 * 1000 / 24
    box = find_roi(peak, region, (1000, 1000), side=336)
    assert box != (332, 332, 668, 668) and box[0] <= cx <= box[2] and box[1] <= cy <= box[3], box


# ---- edge --------------------------------------------------------------------
def _noise(size, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.mark.parametrize("spec", ["png", "jpeg:75", "webp:50"])
def test_bytes_are_the_encoded_payload_and_the_server_sees_the_decoded_one(spec):
    codec = Codec.parse(spec)
    original = _noise((200, 120))
    sent = transmit(original, (20.0, 10.0, 120.0, 110.0), (64, 64), codec)
    expected_view = original.resize((64, 64), Image.Resampling.BICUBIC, box=(20, 10, 120, 110))
    payload = codec.encode(expected_view)
    assert sent.nbytes == len(payload)
    assert np.array_equal(np.asarray(sent.image), np.asarray(Codec.decode(payload)))
    lossless = np.array_equal(np.asarray(sent.image), np.asarray(expected_view))
    assert lossless == (spec == "png")


def test_codec_specs_are_validated():
    assert str(Codec.parse("JPEG:90")) == "jpeg:90"
    for bad in ("gif", "jpeg", "jpeg:0", "webp:101", "png:5"):
        with pytest.raises(ValueError, match="codec must be one of"):
            Codec.parse(bad)


def test_request_is_sixteen_bytes_of_box():
    assert len(encode_request((1, 2, 300, 400))) == 16


# ---- policies ----------------------------------------------------------------
def test_threshold_always_never():
    assert Policy("threshold", threshold=1.0).retransmit(1.01, "a") is True
    assert Policy("threshold", threshold=1.0).retransmit(1.0, "a") is False
    assert Policy("always").retransmit(0.0, "a") is True
    assert Policy("never").retransmit(99.0, "a") is False


def test_random_policy_retransmits_the_same_samples_at_the_right_rate():
    keys = [f"task/{i}" for i in range(4000)]
    policy = Policy("random", rate=0.3, seed=7)
    chosen = [k for k in keys if policy.retransmit(0.0, k)]
    assert chosen == [k for k in keys if Policy("random", rate=0.3, seed=7).retransmit(5.0, k)]
    assert abs(len(chosen) / len(keys) - 0.3) < 0.03
    # Nested: a higher rate retransmits a superset; another seed picks other samples.
    assert set(chosen) <= {k for k in keys if Policy("random", rate=0.6, seed=7).retransmit(0.0, k)}
    assert chosen != [k for k in keys if Policy("random", rate=0.3, seed=8).retransmit(0.0, k)]

def test_uniform_draw_is_a_fixed_hash_spread_evenly_and_independent_across_seeds():
    # Fixed by (seed, key) alone: the first 8 bytes of sha256("0:x") over 2^64, on any machine.
    assert uniform("x", 0) == 0.8586095062719348
    draws = np.array([uniform(f"task/{i}", 0) for i in range(4000)])
    assert ((0 <= draws) & (draws < 1)).all()
    # Even: every tenth of [0, 1) gets its share (binomial sd ~19 draws per bin).
    assert (abs(np.histogram(draws, bins=10, range=(0, 1))[0] - 400) < 80).all()
    # Another seed draws independently of this one, and neighbouring keys do not follow each other.
    other = np.array([uniform(f"task/{i}", 1) for i in range(4000)])
    assert abs(np.corrcoef(draws, other)[0, 1]) < 0.06
    assert abs(np.corrcoef(draws[:-1], draws[1:])[0, 1]) < 0.06


def test_invalid_policy_args_name_the_argument():
    with pytest.raises(ValueError, match="policy must be one of"):
        Policy("sometimes")
    with pytest.raises(ValueError, match="rate must be in"):
        Policy("random", rate=1.5)
