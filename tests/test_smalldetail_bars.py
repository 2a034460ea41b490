"""The bars' arithmetic: the gate's gain over random retransmission, and the paired bootstrap
intervals of the two gains, on samples whose answers are known."""
import numpy as np
import pytest

from collab_eval.analysis.curves import Samples
from collab_eval.lab.smalldetail_bars import by_original_size, gain_intervals, gate_gain, markdown
from collab_eval.records import SampleRecord


def samples(acc1, acc2, score) -> Samples:
    """Samples with the given accuracies and scores (costs are not what these tests read)."""
    zeros = np.zeros(len(acc1))
    return Samples.build(acc1, acc2, score, zeros, zeros, zeros, zeros)


def test_gate_gain_retransmits_the_top_share_by_score():
    acc1, acc2 = [0, 1, 0, 1], [1, 1, 1, 1]
    # Random at 50%: 0.5 * 0.5 + 0.5 * 1.0 = 0.75.
    assert gate_gain(samples(acc1, acc2, [3, 0, 2, 1]), 0.5) == pytest.approx(1.0 - 0.75)  # both wrong answers resent
    assert gate_gain(samples(acc1, acc2, [0, 3, 1, 2]), 0.5) == pytest.approx(0.5 - 0.75)  # both right answers resent


def test_intervals_collapse_when_every_sample_gains_the_same():
    n = 50
    ci = gain_intervals(samples(np.zeros(n), np.ones(n), np.arange(n)), 0.5)
    assert ci["gap_points_ci"] == pytest.approx((100.0, 100.0))
    assert ci["gate_gain_points_ci"] == pytest.approx((0.0, 0.0))  # any half gains what a random half does


def test_gap_interval_matches_the_binomial_spread():
    """Half of 400 samples gain a point: the gap is 50 points with a bootstrap standard error
    of 100 * sqrt(0.25 / 400) = 2.5 points, so its 95% interval is about 50 -/+ 4.9."""
    gains = np.arange(400) % 2 == 0
    acc1, acc2 = np.where(gains, 0.0, 1.0), np.ones(400)
    low, high = gain_intervals(samples(acc1, acc2, np.zeros(400)), 0.5)["gap_points_ci"]
    assert 44.0 < low < 46.5 and 53.5 < high < 56.0, (low, high)


def test_gate_is_reranked_in_each_resample():
    """The score marks exactly the samples that gain. In a resample with k of n gaining, the
    gate at 50% gains min(k, n/2)/n - k/(2n) <= 25 points, reached at k = n/2: the interval's
    top can reach 25 but not pass it, which it would if a resample kept the original ranking."""
    gains = np.arange(400) % 2 == 0
    acc1, acc2 = np.where(gains, 0.0, 1.0), np.ones(400)
    low, high = gain_intervals(samples(acc1, acc2, gains.astype(float)), 0.5)["gate_gain_points_ci"]
    assert 20.0 < low < high <= 25.0 + 1e-9, (low, high)


def test_markdown_prints_each_gain_with_its_interval():
    row = {"n": 150, "never": 0.5, "always": 0.9, "gap_points": 40.0, "gap_points_ci": (31.3, 48.7),
           "gated_at_0.5": 0.86, "random_at_0.5": 0.7, "gate_gain_points_ci": (12.7, 21.0),
           "auroc_stage1_error": 0.91, "roi_contains_target": 0.8, "roi_contains_target_centre": 0.96,
           "by_original_size": {"large": {"n": 77, "never": 0.078, "always": 0.792, "median_score": 2.262,
                                          "gated_at_0.5": 75}}}
    table = markdown({"collab_llava m:png": {"smalldetail_read": row}})
    assert "| **+40.0** [+31.3, +48.7] | 86.0 vs 70.0 (**+16.0**) [+12.7, +21.0] |" in table
    assert "| `smalldetail_read`: large (77) | 7.8 | 79.2 | 2.262 | 75 |" in table


def test_by_original_size_splits_at_the_small_originals_short_side():
    """Two small originals (short side <= 256) read at stage 1, three large ones that only the
    crop reads, and one failed sample without an image: the gate at 50% (3 of 6) sends the
    three highest scores, two large and one small."""
    sizes = [[200, 160], [256, 300], [800, 600], [1024, 576], [448, 700], None]
    records = [SampleRecord(task="smalldetail_read", doc_id=i, question="q", model="m", codec="png", policy="always",
                            image_size=size) for i, size in enumerate(sizes)]
    s = samples(acc1=[1, 1, 0, 0, 1, 0], acc2=[1, 0, 1, 1, 1, 0], score=[0.1, 2.0, 2.2, 0.5, 2.3, 0.0])
    split = by_original_size(records, s, 0.5)
    assert split["small"] == {"n": 2, "never": 1.0, "always": 0.5, "median_score": pytest.approx(1.05),
                              "gated_at_0.5": 1}
    assert split["large"] == {"n": 3, "never": pytest.approx(1 / 3), "always": 1.0, "median_score": pytest.approx(2.2),
                              "gated_at_0.5": 2}
