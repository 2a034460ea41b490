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


# ----- latency curves: the random baseline's expectation and the oracle's order -------------------
def hand_samples():
    """Five samples: accuracies, and keys for the random draws."""
    from collab_eval.analysis.curves import Samples
    acc1, acc2 = [1.0, 0.0, 0.0, 0.5, 0.0], [1.0, 1.0, 1.0, 0.0, 0.5]
    return Samples.build(acc1, acc2, [0.1, 2.0, 1.0, 0.5, 3.0], bytes1=[10] * 5, bytes2=[30] * 5, flops1=[1] * 5,
                         flops2=[2] * 5, keys=[f"t/{i}" for i in range(5)])


def hand_latencies():
    from collab_eval.analysis.latency import Latencies
    return Latencies(np.array([1.0, 2.0, 1.0, 3.0, 0.5]), np.array([2.0, 6.0, 1.5, 3.5, 4.5]))


def test_random_latency_is_the_expectation_and_the_mean_of_seeded_p95s():
    from collab_eval.analysis import curves, latency
    s, lat = hand_samples(), hand_latencies()
    for point, rate in zip(latency.random_curve(s, lat, seeds=3), curves.RATES):
        assert point.mean == pytest.approx(float(((1 - rate) * lat.stage1 + rate * lat.whole).mean()), abs=1e-12)
        p95s = [np.percentile(np.where(curves.draws(s, seed) < rate, lat.whole, lat.stage1), 95) for seed in range(3)]
        assert point.p95 == pytest.approx(float(np.mean(p95s)), abs=1e-12)
        assert point.accuracy == pytest.approx(curves.random_expected(s, rate).accuracy, abs=1e-12)
    assert all(math.isnan(p.p95) for p in latency.random_curve(s, lat, seeds=0))


def test_the_latency_oracle_adds_gainers_by_accuracy_per_extra_second():
    from collab_eval.analysis import latency
    s, lat = hand_samples(), hand_latencies()
    # gainers: 1 (gain 1, extra 4 s), 2 (gain 1, extra 0.5 s), 4 (gain 0.5, extra 4 s): order 2, 1, 4
    curve = latency.oracle_curve(s, lat)
    order = [2, 1, 4]
    assert [p.rate for p in curve] == [0.0, 0.2, 0.4, 0.6]
    mask = np.zeros(5, dtype=bool)
    for count, p in enumerate(curve):
        if count:
            mask[order[count - 1]] = True
        each = np.where(mask, lat.whole, lat.stage1)
        assert p.mean == pytest.approx(float(each.mean()), abs=1e-12)
        assert p.accuracy == pytest.approx(float(np.where(mask, s.acc2, s.acc1).mean()), abs=1e-12)


def test_the_oracle_breaks_a_tie_of_gain_per_second_by_the_smaller_extra():
    from collab_eval.analysis import latency
    from collab_eval.analysis.curves import Samples
    from collab_eval.analysis.latency import Latencies
    s = Samples.build([0.0, 0.0], [1.0, 0.5], [1, 1], [1, 1], [2, 2], [1, 1], [2, 2], keys=["a", "b"])
    lat = Latencies(np.array([1.0, 1.0]), np.array([3.0, 2.0]))  # both 0.5 accuracy per extra second
    curve = latency.oracle_curve(s, lat)
    assert curve[1].mean == pytest.approx((1.0 + 2.0) / 2) and curve[1].accuracy == pytest.approx(0.25)


def test_the_gated_latency_curve_is_the_bytes_curves_points_on_the_clock():
    from collab_eval.analysis import curves, latency
    s, lat = hand_samples(), hand_latencies()
    gated = latency.gated_curve(s, lat)
    points = curves.threshold_curve(s)
    assert len(gated) == len(points)
    for g, p in zip(gated, points):
        each = np.where(s.score > p.tau, lat.whole, lat.stage1)
        assert g.accuracy == p.accuracy and g.tau == p.tau and g.rate == pytest.approx(float((s.score > p.tau).mean()))
        assert g.mean == pytest.approx(float(each.mean()), abs=1e-12)
        assert g.p95 == pytest.approx(float(np.percentile(each, 95)), abs=1e-12)


@pytest.mark.parametrize("flops_per_second, edge_scale, ok", [
    (0.5, 1.0, True), (1e15, 0.0, True), (None, 0.5, True), (0.0, 1.0, False), (-1.0, 1.0, False),
    (math.inf, 1.0, False), (math.nan, 1.0, False), (None, -0.1, False), (None, math.inf, False),
    (None, math.nan, False)])
def test_timing_costs_are_checked(flops_per_second, edge_scale, ok):
    from collab_eval.analysis.latency import Costs
    if ok:
        Costs(flops_per_second, edge_scale)
        return
    with pytest.raises(ValueError, match=r"^--(server-flops-per-second must be a positive number|edge-scale must be a "
                                         r"non-negative number), got "):
        Costs(flops_per_second, edge_scale)


# ----- curves: budgets exactly at a point's cost, mean accuracy over FLOPs ------------------------
def test_a_point_costing_exactly_the_budget_is_within_it():
    from collab_eval.analysis.curves import Envelope, Point
    budget = 2.0
    points = [Point(accuracy=0.3, bytes=1.0, flops=5.0, rate=0.0),
              Point(accuracy=0.9, bytes=budget * (1 + 1e-12), flops=1.0, rate=1.0)]
    assert Envelope(points, "bytes").best_within_each([budget, 0.5]) == [0.9, 0.0]


def test_mean_accuracy_over_an_empty_range_is_the_best_within_that_cost():
    from collab_eval.analysis.curves import Point, mean_accuracy
    points = [Point(accuracy=0.3, bytes=1.0, flops=50.0, rate=0.0), Point(accuracy=0.9, bytes=100.0, flops=5.0,
                                                                            rate=1.0)]
    assert mean_accuracy(points, 10.0, 10.0, cost="flops") == 0.9
    assert mean_accuracy(points, 10.0, 10.0, cost="bytes") == 0.3


def test_the_window_ratios_are_vicrops():
    """docs/method.md: window sides 1.0 to 2.0 times the encoder's input side, in steps of 0.2
    (the naive search above reads RATIOS, so a changed ratio must fail here)."""
    assert RATIOS == (1.0, 1.2, 1.4, 1.6, 1.8, 2.0)


def test_the_derived_always_point_costs_what_the_always_run_spent(tmp_path):
    """From real-shaped records with the generic-prompt pass paid by the first sample of an image
    and cached for the second: the derived always end counts every FLOP once, bytes as sent, and
    the never end stage 1 only (a generic pass counted twice, or dropped, fails here)."""
    from collab_eval.analysis import curves
    from collab_eval.analysis.scoring import Scorer
    from collab_eval.analysis.views import task_view
    from collab_eval.records import SampleRecord
    from tests.report_records import pope_records
    records = [SampleRecord.model_validate(r) for r in pope_records()]
    for i, r in enumerate(records):
        r.image_key = "same-image" if i < 2 else f"image-{i}"
        r.generic_cached = i == 1
        r.flops["generic"] = 0 if i == 1 else 7 + i
        r.bytes_tiles = 5 * i
        r.bytes_total = r.bytes_global + r.bytes_request + r.bytes_local + r.bytes_tiles
        r.flops_total = sum(r.flops.values())
    view = task_view("sys", records[0].task, records, Scorer())
    always, never = curves.always(view.samples), curves.never(view.samples)
    assert always.flops == sum(r.flops_total for r in records) / 4
    assert always.bytes == sum(r.bytes_total for r in records) / 4
    assert never.flops == sum(sum(r.flops[p] for p in ("vision", "projector", "prefill", "decode"))
                              for r in records) / 4
    assert never.bytes == sum(r.bytes_global for r in records) / 4


# ----- latency: a profile's fields, steps missing from a record, transfers starting when sent ------
def latency_records():
    from collab_eval.records import SampleRecord
    from tests.report_records import pope_records
    out = []
    for i, r in enumerate(pope_records()):
        r["seconds"] = {"edge_global": 0.01 * (i + 1), "stage1": 0.1 + 0.05 * i, "roi": 0.02, "edge_local": 0.01,
                        "stage2": 0.3 - 0.05 * i, "total": 1.0}
        out.append(SampleRecord.model_validate(r))
    return out


def test_a_latency_profile_holds_its_ends_oracle_target_and_options():
    from collab_eval.analysis import curves, latency
    from collab_eval.analysis.link import parse_link
    from collab_eval.analysis.scoring import Scorer
    from collab_eval.analysis.views import task_view
    records = latency_records()
    s = task_view("sys", records[0].task, records, Scorer()).samples
    link = parse_link("1mbit@50ms")
    costs = latency.Costs(server_flops_per_second=100.0, edge_scale=2.0)
    p = latency.profile(s, records, link, costs, target_fraction=0.99, seeds=2)
    lat = latency.Latencies.of(records, link, costs)
    assert lat.stage1[0] == pytest.approx(0.02 + 0.025 + 0.0008 + 10 / 100 + 0.025)  # edge scaled, stage 1 by FLOPs
    assert p.server_flops_per_second == 100.0 and p.edge_scale == 2.0 and p.n == 4 and p.link == "1mbit@50ms"
    assert p.placement == "constant link: the start does not matter"
    assert p.never == latency.latency_point(s, lat, np.zeros(4, bool), math.inf) and p.never.tau == math.inf
    assert p.always == latency.latency_point(s, lat, np.ones(4, bool), -math.inf) and p.always.tau == -math.inf
    assert p.oracle == latency.latency_point(s, lat, curves.oracle_mask(s))
    assert p.target_accuracy == pytest.approx(0.99 * p.always.accuracy)
    reaching = [g for g in p.gated if g.accuracy >= p.target_accuracy - 1e-12]
    assert p.reach_target == min(reaching, key=lambda g: (g.mean, g.p95))
    assert len(p.random) == len(curves.RATES) and p.random == latency.random_curve(s, lat, 2)
    assert p.oracle_curve == latency.oracle_curve(s, lat)
    assert len(p.oracle_curve) == int(curves.oracle_mask(s).sum()) + 1
    unreachable = latency.profile(s, records, link, costs, target_fraction=2.0, seeds=0)
    assert unreachable.reach_target is None


def test_steps_and_flops_missing_from_a_record_count_zero():
    from collab_eval.analysis import latency
    from collab_eval.analysis.link import parse_link
    r = latency_records()[0].model_copy(update={"seconds": {"stage1": 0.5}, "flops": {"vision": 30}})
    s = latency.step_seconds(r)
    assert s == {"edge_global": 0.0, "edge_local": 0.0, "stage1": 0.5, "roi": 0.0, "stage2": 0.0}
    by_flops = latency.step_seconds(r, latency.Costs(server_flops_per_second=10.0))
    assert (by_flops["stage1"], by_flops["roi"], by_flops["stage2"]) == (3.0, 0.0, 0.0)
    link = parse_link("8mbit@0ms")
    assert latency.sample_latency(r, link, False) == pytest.approx(0.5 + 8 * r.bytes_global / 8e6)


@pytest.mark.parametrize("up_ms, down_ms", [((3, 7, 20, 45, 46, 90, 200), tuple(range(1, 301))),
                                             (tuple(range(1, 301)), (5, 60, 150)),
                                             ((3, 7, 20, 45, 46, 90, 200), (5, 60, 150))])
@pytest.mark.parametrize("start", [0.0, 0.013, 0.171])
def test_on_a_trace_each_transfer_starts_when_it_is_sent(tmp_path, up_ms, down_ms, start):
    """Tiles, request and crop each wait for the trace's next opportunities from the moment
    they are sent: computed step by step here with the trace's own transfer function (a sparse
    trace one way and a dense one the other, so a transfer timed from the wrong moment shows)."""
    from collab_eval.analysis import latency
    from collab_eval.analysis.link import parse_link
    up, down = tmp_path / "up.trace", tmp_path / "down.trace"
    up.write_text("".join(f"{t}\n" for t in up_ms))
    down.write_text("".join(f"{t}\n" for t in down_ms))
    link = parse_link(f"trace:{up},{down}@10ms")
    r = latency_records()[1].model_copy(update={"bytes_tiles": 4000})
    s = latency.step_seconds(r)
    half = 0.005
    t = start + s["edge_global"]
    t += half + link.up.transfer_seconds(r.bytes_global, t)
    t += s["stage1"] + half
    t += half + link.up.transfer_seconds(r.bytes_tiles, t)
    t += s["roi"]
    t += half + link.down.transfer_seconds(r.bytes_request, t)
    t += s["edge_local"]
    t += half + link.up.transfer_seconds(r.bytes_local, t)
    t += s["stage2"] + half
    assert latency.sample_latency(r, link, True, start) == pytest.approx(t - start, abs=1e-12)


def test_samples_start_spread_over_the_trace_in_doc_id_order(tmp_path):
    from collab_eval.analysis import latency
    from collab_eval.analysis.link import parse_link
    trace = tmp_path / "up.trace"
    trace.write_text("10\n20\n40\n")
    records = latency_records()
    shuffled = [records[2], records[0], records[3], records[1]]  # doc_ids 2, 0, 3, 1
    starts = latency.start_times(shuffled, parse_link(f"trace:{trace}"))
    assert starts.tolist() == [0.02, 0.0, 0.03, 0.01]  # doc i starts at i * 0.04 / 4
    assert latency.start_times(shuffled, parse_link("1mbit")).tolist() == [0.0] * 4
    assert "evenly spread over the trace's 0.04 s" in latency.placement_text(parse_link(f"trace:{trace}"))


# ----- curves: the ends of a small or empty task, the bytes oracle, the target's edge ------------
def test_one_sample_and_no_sample_have_their_own_points():
    from collab_eval.analysis import curves
    from collab_eval.analysis.curves import Samples
    one = Samples.build([0.0], [1.0], [0.5], [10], [30], [2], [5], keys=["t/0"])
    assert curves.always(one) == curves.Point(accuracy=1.0, bytes=30.0, flops=5.0, rate=1.0)
    assert curves.never(one) == curves.Point(accuracy=0.0, bytes=10.0, flops=2.0, rate=0.0)
    assert [(p.rate, p.accuracy) for p in curves.threshold_curve(one)] == [(0.0, 0.0), (1.0, 1.0)]
    empty = Samples.build([], [], [], [], [], [], [])
    p = curves.point(empty, np.zeros(0, bool), tau=3.0)
    assert all(math.isnan(v) for v in (p.accuracy, p.bytes, p.flops, p.rate)) and p.tau == 3.0
    assert curves.threshold_curve(empty) == [] or all(math.isnan(q.accuracy) for q in curves.threshold_curve(empty))
    assert curves.exact_prefix_sums(np.array([]), np.array([]), np.array([], dtype=int), [0]) == [0.0]


def test_the_bytes_oracle_adds_gainers_by_accuracy_per_extra_byte():
    from collab_eval.analysis import curves
    from collab_eval.analysis.curves import Samples
    # gainers 0 (gain 1, 100 extra bytes), 1 (gain 0.5, 10 extra), 3 (gain 1, 1000 extra): order 1, 0, 3
    s = Samples.build([0.0, 0.5, 1.0, 0.0], [1.0, 1.0, 0.0, 1.0], [1, 1, 1, 1], [10, 10, 10, 10],
                      [110, 20, 50, 1010], [1, 1, 1, 1], [2, 2, 2, 2], keys=list("abcd"))
    got = curves.oracle_curve(s)
    assert [p.bytes for p in got] == [10.0, (10 + 20 + 10 + 10) / 4, (110 + 20 + 10 + 10) / 4,
                                      (110 + 20 + 10 + 1010) / 4]
    assert [p.accuracy for p in got] == [0.375, 0.5, 0.75, 1.0]


def test_a_point_exactly_at_the_target_reaches_it():
    from collab_eval.analysis.curves import Point, cheapest_reaching
    at = Point(accuracy=0.5, bytes=5.0, flops=1.0, rate=0.5)
    assert cheapest_reaching([at], 0.5) == at
    zero = Point(accuracy=0.0, bytes=1.0, flops=1.0, rate=0.0)
    assert cheapest_reaching([zero], 1e-12) == zero  # within the 1e-12 tolerance
    assert cheapest_reaching([zero], 1e-6) is None


def test_never_means_never_and_tiles_always_for_every_key():
    keys = [f"t/{i}" for i in range(50)]
    assert not any(Policy("never").retransmit(math.inf, k) for k in keys)
    assert all(Policy("tiles").retransmit(-math.inf, k) for k in keys)
    assert all(Policy("always").retransmit(-math.inf, k) for k in keys)


@pytest.mark.parametrize("seed", range(5))
def test_prefix_points_equal_point_after_number_for_number(seed):
    """curves.prefix_points' docstring: each of its points equals point_after's (the definition)."""
    from collab_eval.analysis import curves
    from collab_eval.analysis.curves import Samples
    rng = np.random.default_rng(seed)
    n = 12
    group = rng.integers(0, 4, n)
    s = Samples.build(rng.random(n).round(2), rng.random(n).round(2), rng.random(n), rng.integers(5, 50, n),
                      rng.integers(60, 200, n), rng.integers(1, 9, n), rng.integers(10, 90, n), group=group,
                      generic=rng.integers(1, 30, 4), keys=[f"t/{i}" for i in range(n)])
    order = rng.permutation(n)
    counts = [0, 3, 7, 12]
    taus = [float(t) for t in rng.random(4)]
    assert curves.prefix_points(s, order, counts, taus) == [curves.point_after(s, order, c, t)
                                                             for c, t in zip(counts, taus)]
    mask = np.zeros(n, bool)
    mask[order[:7]] = True
    assert curves.point_after(s, order, 7, 0.5) == curves.point(s, mask, 0.5)


def test_the_oracles_rank_by_gain_not_by_accuracy_and_by_seconds_under_one():
    """Gain is stage 2 minus stage 1 (a gainer already half right gains less), and an extra
    second under one counts as what it is: sample 0 gains 0.5 for 1 s, sample 1 gains 0.6 for
    1 s (first); sample 2 gains 1.0 for 0.5 s, sample 3 gains 0.9 for 0.3 s (first)."""
    from collab_eval.analysis import curves, latency
    from collab_eval.analysis.curves import Samples
    from collab_eval.analysis.latency import Latencies
    s = Samples.build([0.5, 0.0, 0.0, 0.0], [1.0, 0.6, 1.0, 0.9], [1] * 4, [10, 10, 10, 10], [110, 110, 60, 40],
                      [1] * 4, [2] * 4, keys=list("abcd"))
    lat = Latencies(np.array([1.0, 1.0, 1.0, 1.0]), np.array([2.0, 2.0, 1.5, 1.3]))
    by_seconds = latency.oracle_curve(s, lat)
    # per extra second: 3 (3.0), 2 (2.0), 1 (0.6), 0 (0.5)
    assert [round(p.mean, 9) for p in by_seconds] == [1.0, 1.075, 1.2, 1.45, 1.7]
    assert [round(p.accuracy, 9) for p in by_seconds] == [0.125, 0.35, 0.6, 0.75, 0.875]
    by_bytes = curves.oracle_curve(s)
    # per extra byte: 3 (0.9/30), 2 (1.0/50), 1 (0.6/100), 0 (0.5/100; the tie broken by fewer bytes: equal)
    assert [p.bytes for p in by_bytes] == [10.0, 17.5, 30.0, 55.0, 80.0]
    assert [round(p.accuracy, 9) for p in by_bytes] == [0.125, 0.35, 0.6, 0.75, 0.875]


def test_the_bytes_oracle_counts_extra_bytes_not_total_bytes_and_a_free_gain_first():
    """Extra bytes are bytes2 - bytes1 (samples with different global images), and a gainer
    that costs no extra byte comes first whatever it gains."""
    from collab_eval.analysis import curves
    from collab_eval.analysis.curves import Samples
    # sample 0: gain 1 for 100 extra bytes over a 1000-byte global; sample 1: gain 0.5 for 40 over 10;
    # sample 2: gain 0.1 for nothing extra. Per extra byte: 2 (free), 1 (0.0125), 0 (0.01).
    s = Samples.build([0.0, 0.0, 0.0], [1.0, 0.5, 0.1], [1] * 3, [1000, 10, 30], [1100, 50, 30], [1] * 3, [2] * 3,
                      keys=list("abc"))
    assert [p.bytes for p in curves.oracle_curve(s)] == [1040 / 3, 1040 / 3, 1080 / 3, 1180 / 3]
    assert [round(p.accuracy, 9) for p in curves.oracle_curve(s)] == [0.0, round(0.1 / 3, 9), 0.2, round(1.6 / 3, 9)]
