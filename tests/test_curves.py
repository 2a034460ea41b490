"""The trade-off arithmetic against hand-computed cases and brute force over every gate."""
import itertools
import math

import numpy as np
import pytest

from collab_eval.analysis import curves
from collab_eval.analysis.curves import Point, Samples


def hand_case() -> Samples:
    # sample:        0     1     2     3
    return Samples.build(
        acc1=[1, 0, 0, 0], acc2=[0, 1, 1, 0], score=[2.0, 0.5, None, 1.0],
        bytes1=[100, 100, 100, 100], bytes2=[300, 200, 400, 300],
        flops1=[10, 10, 10, 10], flops2=[30, 30, 30, 30], keys=["t/0", "t/1", "t/2", "t/3"])


def as_tuple(p: Point):
    return (p.tau, p.rate, p.bytes, p.flops, p.accuracy)


def test_threshold_curve_matches_hand_computation():
    # Scores in descending order: +inf (sample 2, empty answer), 2.0, 1.0, 0.5.
    assert [as_tuple(p) for p in curves.threshold_curve(hand_case())] == [
        (math.inf, 0.0, 100.0, 10.0, 0.25),   # nothing is above +inf: never
        (2.0, 0.25, 175.0, 15.0, 0.5),        # sample 2
        (1.0, 0.5, 225.0, 20.0, 0.25),        # + sample 0, which stage 2 breaks
        (0.5, 0.75, 275.0, 25.0, 0.25),       # + sample 3
        (-math.inf, 1.0, 300.0, 30.0, 0.5),   # everything: always
    ]


def test_threshold_curve_ties_enter_together_and_first_point_is_highest_score():
    s = Samples.build(acc1=[0, 0, 0], acc2=[1, 1, 1], score=[1.0, 1.0, 2.0], bytes1=[1, 1, 1], bytes2=[2, 2, 2],
                      flops1=[1, 1, 1], flops2=[1, 1, 1])
    assert [(p.tau, p.rate) for p in curves.threshold_curve(s)] == [(2.0, 0.0), (1.0, 1 / 3), (-math.inf, 1.0)]


def test_every_curve_point_is_what_the_gate_does_at_its_tau():
    s = hand_case()
    for p in curves.threshold_curve(s):
        assert curves.threshold_point(s, p.tau) == p
    # Between two scores the gate decides as at the lower one's point.
    assert as_tuple(curves.threshold_point(s, 1.5))[1:] == as_tuple(curves.threshold_curve(s)[2])[1:]


def test_ends():
    s = hand_case()
    assert as_tuple(curves.never(s)) == (None, 0.0, 100.0, 10.0, 0.25)
    assert as_tuple(curves.always(s)) == (None, 1.0, 300.0, 30.0, 0.5)


def test_random_expectation_formula_by_hand():
    p = curves.random_expected(hand_case(), 0.5)
    # (1-p) * stage 1 + p * stage 2, per sample, averaged.
    assert (p.accuracy, p.bytes, p.flops, p.rate) == (0.375, 200.0, 20.0, 0.5)


def grouped_case() -> Samples:
    # Samples 0 and 1 share an image, hence one generic-prompt pass of 8 FLOPs.
    return Samples.build(
        acc1=[1, 0, 0.5, 0], acc2=[0, 1, 1, 1 / 3], score=[0.3, 0.1, 0.2, 0.4],
        bytes1=[10, 20, 30, 40], bytes2=[15, 27, 31, 70], flops1=[1, 2, 3, 4], flops2=[5, 7, 9, 11],
        group=[0, 0, 1, 2], generic=[8, 6, 5])


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.5, 0.9, 1.0])
def test_random_expectation_equals_brute_force_over_all_draws(rate):
    s = grouped_case()
    expected = np.zeros(3)
    for mask in itertools.product([False, True], repeat=s.n):
        k = sum(mask)
        weight = rate ** k * (1 - rate) ** (s.n - k)
        p = curves.point(s, np.array(mask))
        expected += weight * np.array([p.accuracy, p.bytes, p.flops])
    got = curves.random_expected(s, rate)
    assert [got.accuracy, got.bytes, got.flops] == pytest.approx(expected.tolist(), rel=1e-12, abs=1e-12)


def test_generic_pass_is_paid_once_per_group():
    s = grouped_case()
    both = curves.point(s, np.array([True, True, False, False]))
    one = curves.point(s, np.array([True, False, False, False]))
    assert both.flops * 4 == 5 + 7 + 3 + 4 + 8
    assert one.flops * 4 == 5 + 2 + 3 + 4 + 8
    assert curves.always(s).flops * 4 == 5 + 7 + 9 + 11 + 8 + 6 + 5


def test_random_draws_match_the_policy_hash_and_average_to_the_expectation():
    from collab_eval.policy import Policy
    s = Samples.build(acc1=[0] * 40, acc2=[1] * 40, score=[0.0] * 40, bytes1=[1] * 40, bytes2=[3] * 40,
                      flops1=[1] * 40, flops2=[1] * 40, keys=[f"t/{i}" for i in range(40)])
    policy = Policy("random", rate=0.3, seed=7)
    draw = curves.random_draw(s, 0.3, 7)
    assert draw.rate * 40 == sum(policy.retransmit(0.0, key) for key in s.keys)
    mean = np.mean([curves.random_draw(s, 0.3, seed).accuracy for seed in range(400)])
    assert mean == pytest.approx(curves.random_expected(s, 0.3).accuracy, abs=0.01)
    band = curves.random_band(s, rates=(0.0, 0.3, 1.0), seeds=range(50))
    assert band[0].lo == band[0].hi == 0.0 and band[2].lo == band[2].hi == 1.0
    assert band[1].lo < 0.3 < band[1].hi


def test_oracle_by_hand():
    s = hand_case()
    assert list(curves.oracle_mask(s)) == [False, True, True, False]
    assert as_tuple(curves.point(s, curves.oracle_mask(s)))[1:] == (0.5, 200.0, 20.0, 0.75)
    # Cheapest fix first: sample 1 (+100 bytes) before sample 2 (+300 bytes).
    assert [as_tuple(p)[1:] for p in curves.oracle_curve(s)] == [
        (0.0, 100.0, 10.0, 0.25), (0.25, 125.0, 15.0, 0.5), (0.5, 200.0, 20.0, 0.75)]


def test_oracle_bounds_every_gate():
    rng = np.random.default_rng(0)
    n = 7
    s = Samples.build(acc1=rng.integers(0, 2, n), acc2=rng.integers(0, 2, n), score=rng.random(n),
                      bytes1=[50] * n, bytes2=rng.integers(60, 200, n), flops1=[1] * n, flops2=[2] * n)
    oracle = curves.oracle_curve(s)
    best = 0.0
    for mask in itertools.product([False, True], repeat=n):
        p = curves.point(s, np.array(mask))
        best = max(best, p.accuracy)
        assert p.accuracy <= curves.best_within(oracle, p.bytes) + 1e-12
    assert oracle[-1].accuracy == best
    gated = curves.threshold_curve(s)
    assert all(g.accuracy <= curves.best_within(oracle, g.bytes) + 1e-12 for g in gated)


def test_auroc():
    assert curves.auroc([3, 2, 1, 0], [True, False, True, False]) == 0.75
    assert curves.auroc([1, 1], [True, False]) == 0.5
    assert curves.auroc([None, 0.1, 0.2], [True, False, False]) == 1.0  # null = +inf: an empty answer
    assert curves.auroc([0.1, 0.2], [False, False]) is None


def test_budget_envelope_and_mean_accuracy():
    points = curves.threshold_curve(hand_case())  # (bytes, acc): 100 .25, 175 .5, 225 .25, 275 .25, 300 .5
    assert curves.best_within(points, 99) == 0.0
    assert curves.best_within(points, 150) == 0.25
    assert curves.best_within(points, 175) == 0.5
    assert curves.best_within(points, 250) == 0.5
    assert curves.mean_accuracy(points, 100, 300) == pytest.approx((75 * 0.25 + 125 * 0.5) / 200)
    assert curves.mean_accuracy(points, 20, 20) == 0.0
    assert curves.best_within(points, 15.0, cost="flops") == 0.5


def test_cheapest_reaching():
    points = curves.threshold_curve(hand_case())
    assert curves.cheapest_reaching(points, 0.99 * 0.5).bytes == 175.0
    assert curves.cheapest_reaching(points, 0.9) is None


def test_point_json_round_trip_keeps_infinite_thresholds():
    for p in curves.threshold_curve(hand_case()):
        d = p.model_dump()
        assert all(not isinstance(v, float) or math.isfinite(v) for v in d.values())
        assert Point.model_validate(d, strict=True) == p


def random_case(n: int, seed: int) -> Samples:
    """Accuracies that are not sums of powers of two (TextVQA's tenths and thirds), tied scores,
    empty answers and shared cache groups: where a shortcut in the sums would show."""
    rng = np.random.default_rng(seed)
    levels = np.array([0.0, 0.1, 0.3, 1 / 3, 0.6, 2 / 3, 0.9, 1.0])
    score = rng.choice([0.5, 1.0, 1.7, 2.25, 3.0, None], size=n).tolist()
    score = [s if s is None or rng.random() < 0.5 else s + rng.random() for s in score]
    group = rng.integers(0, max(1, n // 3), size=n)
    return Samples.build(acc1=rng.choice(levels, size=n), acc2=rng.choice(levels, size=n), score=score,
                         bytes1=rng.integers(100, 200, size=n), bytes2=rng.integers(200, 900, size=n),
                         flops1=rng.integers(10, 20, size=n), flops2=rng.integers(20, 90, size=n),
                         group=group, generic=rng.integers(5, 50, size=group.max() + 1),
                         keys=[f"t/{i}" for i in range(n)])


@pytest.mark.parametrize("seed", range(5))
def test_linear_time_curves_equal_each_point_computed_directly(seed):
    s = random_case(300, seed)
    gated = curves.threshold_curve(s)
    assert len(gated) > 100
    for p in gated:  # exactly equal, number for number, to the gate applied at its tau
        assert curves.threshold_point(s, p.tau) == p
    order = np.flatnonzero(curves.oracle_mask(s))
    oracle = curves.oracle_curve(s)
    assert oracle[-1] == curves.point(s, curves.oracle_mask(s))
    assert len(oracle) == len(order) + 1 and all(p.tau is None for p in oracle)


def test_accuracy_sums_are_exact_before_rounding():
    # 0.1 ten times is 0.9999999999999999 summed left to right; exactly 1.0.
    s = Samples.build(acc1=[0.0] * 10, acc2=[0.1] * 10, score=list(range(10)), bytes1=[1] * 10, bytes2=[2] * 10,
                      flops1=[1] * 10, flops2=[1] * 10)
    assert curves.threshold_curve(s)[-1].accuracy == 0.1 == curves.always(s).accuracy


def naive_best_within(points, budget, cost="bytes"):
    within = [p.accuracy for p in points if getattr(p, cost) <= budget * (1 + 1e-12)]
    return max(within) if within else 0.0


def test_budget_envelope_equals_the_definition_on_many_points():
    points = curves.threshold_curve(random_case(400, 7)) + curves.oracle_curve(random_case(400, 8))
    for cost in ("bytes", "flops"):
        values = sorted({getattr(p, cost) for p in points})
        budgets = [values[0] - 1, *values, *(v * (1 + 1e-13) for v in values[::7]), values[-1] + 1]
        envelope = curves.Envelope(points, cost)
        assert [envelope.best_within(b) for b in budgets] == [naive_best_within(points, b, cost) for b in budgets]
        lo, hi = values[3], values[-5]
        steps = sorted({lo, hi, *(v for v in values if lo < v < hi)})
        naive = sum(naive_best_within(points, a, cost) * (b - a) for a, b in zip(steps, steps[1:])) / (hi - lo)
        assert curves.mean_accuracy(points, lo, hi, cost) == naive


def test_random_band_draws_each_seed_once_and_equal_single_draws():
    s = random_case(200, 3)
    band = curves.random_band(s, rates=(0.0, 0.3, 1.0), seeds=range(5))
    for row in band:
        acc = [curves.random_draw(s, row.rate, seed).accuracy for seed in range(5)]
        assert (row.lo, row.hi) == (float(np.quantile(acc, 0.1)), float(np.quantile(acc, 0.9)))
