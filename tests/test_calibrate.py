"""collab-eval calibrate: choosing τ with a finite-sample guarantee (Learn-then-Test).

Fast tests check the statistics on synthetic per-sample arrays (known p-values, the exact
type-I error of the randomised test, a monotone case with a known answer, cost budgets, the
safe fallbacks). Slow tests run lmms-eval once (smalldetail-llava, policy=always, the whole
smalldetail_read test split) and check the guarantee over many random splits of that run, and
that a planted shift between calibration and test breaks it.
"""
import json
import math

import numpy as np
import pytest
from scipy import stats

from collab_eval.analysis import calibrate as cal
from collab_eval.analysis.curves import Samples


def synthetic(acc1, acc2, score, bytes1=100, bytes2=300, flops1=10, flops2=30) -> Samples:
    n = len(acc1)
    return Samples.build(acc1, acc2, score, bytes1=[bytes1] * n, bytes2=[bytes2] * n,
                         flops1=[flops1] * n, flops2=[flops2] * n)


# ----- p-values ------------------------------------------------------------------------
def test_loss_p_value_of_no_loss_is_the_binomial_zero_count():
    # Seeing no nonzero loss in n images: the least favourable null loses eps on +1s only,
    # and shows no loss with probability (1 - eps)^n.
    assert cal.loss_p_value(75, 0, 0, 0.03) == pytest.approx(0.97 ** 75, rel=1e-9)
    assert cal.loss_p_value(76, 0, 0, 0.03) == pytest.approx(0.97 ** 76, rel=1e-9)
    # 75 images cannot pass ε = 0.03 at δ = 0.1 deterministically; 76 can.
    assert cal.loss_p_value(75, 0, 0, 0.03) > 0.1 > cal.loss_p_value(76, 0, 0, 0.03)
    # The randomised test spends u of the tie's probability.
    assert cal.loss_p_value(75, 0, 0, 0.03, u=0.5) < cal.loss_p_value(75, 0, 0, 0.03, u=0.9) < 0.1
    # Losses balanced by gains are evidence too, and more losses are less evidence.
    assert cal.loss_p_value(75, 0, 2, 0.03) < cal.loss_p_value(75, 0, 0, 0.03)
    assert cal.loss_p_value(75, 2, 0, 0.03) > cal.loss_p_value(75, 1, 0, 0.03) > cal.loss_p_value(75, 0, 0, 0.03)
    # A large sample with a small net loss is strong evidence; one near ε is not.
    assert cal.loss_p_value(2000, 16, 12, 0.01) < 0.02
    assert cal.loss_p_value(2000, 32, 12, 0.01) > 0.3


@pytest.mark.slow  # a second or more: the fast tier stays under a minute
def test_randomised_loss_test_has_exact_size(n=30, eps=0.05):
    """The exact probability of rejecting at level δ, summed over every outcome (N+, N-) of a
    null distribution on the boundary p+ - p- = ε: at most δ for every nuisance value, and
    close to δ at the least favourable one (the randomisation wastes nothing)."""
    delta = 0.1
    outcomes = [(a, b) for a in range(n + 1) for b in range(n + 1 - a)]
    # P(reject | outcome) = the largest u with p(u) <= δ (p rises with u), found by bisection.
    reject = {}
    for a, b in outcomes:
        if cal.loss_p_value(n, a, b, eps, u=0.0) > delta:
            reject[(a, b)] = 0.0
        elif cal.loss_p_value(n, a, b, eps, u=1.0) <= delta:
            reject[(a, b)] = 1.0
        else:
            lo, hi = 0.0, 1.0
            for _ in range(30):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if cal.loss_p_value(n, a, b, eps, u=mid) <= delta else (lo, mid)
            reject[(a, b)] = lo
    sizes = []
    for p_minus in (0.0, 0.01, 0.05, 0.2, (1 - eps) / 2):
        p_plus = p_minus + eps
        size = sum(stats.multinomial.pmf([a, b, n - a - b], n, [p_plus, p_minus, 1 - p_plus - p_minus]) * r
                   for (a, b), r in reject.items() if r > 0)
        sizes.append(size)
    assert max(sizes) <= delta + 1e-6, sizes
    assert max(sizes) >= 0.95 * delta, sizes


def test_betting_p_value_known_value_validity_and_power():
    # One value 0 against m = 0.5: the first bet is min(sqrt(2 ln 10 / 0.25), 0.75 / 0.5) = 1.5,
    # the capital 1 + 1.5 * 0.5.
    assert cal.betting_p_value(np.array([0.0]), 0.5, 0.1) == pytest.approx(1 / 1.75)
    assert cal.betting_p_value(np.array([0.9, 1.0]), 0.5, 0.1) == 1.0  # above m: no evidence
    rng = np.random.default_rng(0)
    # Valid: values whose mean is exactly m are rejected at most δ of the time.
    for m in (0.2, 0.5):
        draws = [cal.betting_p_value((rng.uniform(size=75) < m).astype(float), m, 0.1) for _ in range(2000)]
        assert np.mean(np.array(draws) <= 0.1) <= 0.1 + 3 * math.sqrt(0.1 * 0.9 / 2000)
    # Variance-adaptive: a mean 0.05 below m with little spread is clear evidence at n = 75,
    # where Hoeffding's margin would be sqrt(ln 10 / 150) = 0.12.
    x = np.clip(rng.normal(0.45, 0.03, 75), 0, 1)
    assert cal.betting_p_value(x, 0.5, 0.1) < 0.01
    assert cal.betting_p_value(x, 0.46, 0.1) > 0.1


# ----- choosing τ ----------------------------------------------------------------------
def monotone(n=400, clean=200, gains=0):
    """Images scored 0..n-1 (/n): stage 1 right below ``clean`` and wrong above it, stage 2 always
    right; ``gains`` of the clean ones are ones stage 2 would break (loss -1 when kept)."""
    score = np.arange(n) / n
    acc1 = (np.arange(n) < clean).astype(float)
    acc2 = np.ones(n)
    acc2[:gains] = 0.0
    return synthetic(acc1, acc2, score), [f"img{i}" for i in range(n)]


@pytest.mark.slow  # a second or more: the fast tier stays under a minute
def test_loss_target_on_a_monotone_case_has_a_known_answer():
    s, names = monotone()
    # Deterministic test: the last threshold passed keeps all 200 clean images and j wrong ones,
    # the largest j whose p-value at (N+ = j, N- = 0) is at most δ.
    j = next(k for k in range(60) if cal.loss_p_value(400, k, 0, 0.05) > 0.1) - 1
    assert 0 < j < 20  # ε·n = 20 losses would be the naive, unguaranteed answer
    result = cal.calibrate(s, names, cal.Target("loss", 0.05, 0.1), randomise=False)
    assert result.feasible and result.tau == pytest.approx((199 + j) / 400)
    assert result.calib.loss == pytest.approx(j / 400)
    assert result.calib.retransmitted == pytest.approx((200 - j) / 400)
    assert "threshold=" + repr(result.tau) in result.model_args
    # Gains that stage 2 would have broken count in the gate's favour: it goes further.
    s2, names2 = monotone(gains=10)
    assert cal.calibrate(s2, names2, cal.Target("loss", 0.05, 0.1), randomise=False).tau > result.tau


def test_no_feasible_threshold_falls_back_to_the_safe_end():
    # Too few images for ε at δ (0.99^40 > 0.1): always for a loss target.
    s, names = monotone(n=40, clean=20)
    result = cal.calibrate(s, names, cal.Target("loss", 0.01, 0.1), randomise=False)
    assert not result.feasible and result.tau == -math.inf and result.p_value is None
    assert result.calib.retransmitted == 1.0 and result.calib.loss == 0.0
    assert result.model_dump()["tau"] == "-inf" and "threshold=-inf" in result.model_args
    assert "NO FEASIBLE THRESHOLD" in cal.calibration_table(result)
    assert cal.Calibration.model_validate_json(json.dumps(result.model_dump()), strict=True) == result
    # A budget below never's cost: never, and said so.
    result = cal.calibrate(s, names, cal.Target("bytes", 50, 0.1))
    assert not result.feasible and result.tau == math.inf and result.calib.retransmitted == 0.0


def test_byte_budget_picks_the_most_accurate_threshold_within_an_upper_bound():
    s, names = monotone(n=400, clean=100)  # retransmitting the high scores is what helps
    budget = 200  # bytes: 100 + 200·rate, so at most half retransmitted on average
    result = cal.calibrate(s, names, cal.Target("bytes", budget, 0.1), randomise=False)
    # The guarantee costs a margin: the rate's upper bound must stay under 0.5.
    assert result.feasible and result.calib.bytes < budget
    assert 0.4 < result.calib.retransmitted < 0.5
    # The most accurate passing τ is the one retransmitting the most (stage 2 helps).
    bigger = cal.calibrate(s, names, cal.Target("bytes", 260, 0.1), randomise=False)
    assert bigger.calib.retransmitted > result.calib.retransmitted
    assert bigger.calib.accuracy >= result.calib.accuracy
    # FLOPs likewise (10 + 20·rate per sample).
    flops = cal.calibrate(s, names, cal.Target("flops", 20, 0.1), randomise=False)
    assert flops.feasible and flops.calib.flops < 20 and 0.4 < flops.calib.retransmitted < 0.5


def test_null_scores_are_always_retransmitted():
    s, names = monotone(n=400, clean=200)
    score = list(s.score)
    score[0] = None  # an empty stage-1 answer: stage 1 wrong, stage 2 right
    acc1 = s.acc1.copy()
    acc1[0] = 0.0
    s = synthetic(acc1, s.acc2, score)
    result = cal.calibrate(s, names, cal.Target("loss", 0.05, 0.1), randomise=False)
    assert result.feasible and math.isfinite(result.tau)
    kept = np.flatnonzero(~(s.score > result.tau))
    assert 0 not in kept and result.calib.loss >= 0


def test_split_keeps_questions_on_one_image_together():
    names = [f"img{i // 3}" for i in range(300)]  # 100 images, 3 questions each
    for seed in range(5):
        mask = cal.split_by_image(names, 0.3, np.random.default_rng(seed))
        by_image = {}
        for name, m in zip(names, mask):
            by_image.setdefault(name, set()).add(bool(m))
        assert all(len(sides) == 1 for sides in by_image.values())
        assert mask.sum() == 90
    with pytest.raises(ValueError, match="calib-fraction"):
        cal.split_by_image(names, 1.0, np.random.default_rng(0))
    # Several questions per image: the unit is the image (a loss per image is a mean).
    acc1 = np.array([1.0, 0.0, 1.0] * 100)
    s = synthetic(acc1, np.ones(300), np.repeat(np.arange(100) / 100, 3))
    result = cal.calibrate(s, names, cal.Target("loss", 0.2, 0.1), calib_fraction=0.5, seed=1)
    assert result.calib.images == 50 and result.test.images == 50 and result.calib.n == 150


@pytest.mark.slow  # a second or more: the fast tier stays under a minute
def test_guarantee_holds_over_splits_of_a_synthetic_population():
    """A population where the loss grows with τ: over many splits, the share whose chosen τ
    has a true expected loss above ε stays below δ."""
    rng = np.random.default_rng(7)
    n = 600
    score = rng.uniform(0, 1, n)
    acc2 = (rng.uniform(size=n) < 0.9).astype(float)
    acc1 = np.where(rng.uniform(size=n) < 1 - score, acc2, 1 - acc2)  # stage 1 worse as the score rises
    s = synthetic(acc1, acc2, score)
    names = [f"img{i}" for i in range(n)]
    eps, delta, bad = 0.05, 0.2, 0
    for seed in range(100):
        result = cal.calibrate(s, names, cal.Target("loss", eps, delta), calib_fraction=0.1, seed=seed)
        population = cal.part_result(s, names, result.tau)  # the whole 600 as the distribution
        bad += population.loss > eps
    assert bad <= 100 * delta, bad


# ----- on a real run -------------------------------------------------------------------
@pytest.fixture(scope="session")
def always_run(trained_always_run):
    """smalldetail-llava's always run of both smalldetail tasks (the session's: tests/conftest.py)."""
    return trained_always_run("llava").out


def real_samples(run_dir):
    from collab_eval.analysis.runs import find_runs
    from collab_eval.analysis.scoring import Scorer
    records = cal.always_records(find_runs(run_dir), "smalldetail_read", str(run_dir))
    samples, names, system, score = cal.samples_of(records, "smalldetail_read", None, Scorer())
    return samples, names, records


@pytest.mark.slow
def test_guarantee_over_random_splits_of_a_real_run_and_a_planted_shift_breaks_it(always_run):
    samples, names, records = real_samples(always_run)
    assert samples.n == 150
    target = cal.Target("loss", 0.03, 0.1)
    results = [cal.calibrate(samples, names, target, calib_fraction=0.5, seed=seed) for seed in range(100)]
    exceed = sum(r.test.loss > target.limit for r in results)
    # At most δ of the splits (4 of 100 measured). The guarantee is on the expected loss; the
    # test part's realised loss is a 75-sample estimate of it, which only adds splits above ε.
    assert exceed <= 100 * target.delta, exceed
    mean_bytes = np.mean([r.test.bytes for r in results])
    always_bytes = np.mean([r.test.always_bytes for r in results])
    assert mean_bytes < 0.85 * always_bytes, (mean_bytes, always_bytes)
    assert sum(r.feasible for r in results) >= 90
    # Planted shift: calibrate only on images where retransmitting would not have helped
    # (stage 1 as good as stage 2), test on the others. Not exchangeable: the guarantee fails.
    helped = samples.acc2 > samples.acc1
    calib_index, test_index = np.flatnonzero(~helped), np.flatnonzero(helped)
    shifted = cal.calibrate(cal.subset(samples, calib_index), [names[i] for i in calib_index], target,
                            test=(cal.subset(samples, test_index), [names[i] for i in test_index]))
    assert shifted.feasible and shifted.calib.loss <= 0
    assert shifted.test.loss > 10 * target.limit, shifted.test


@pytest.mark.slow
def test_cli_json_table_and_errors(always_run, tiny_llava_run, capsys):
    from collab_eval.cli import main
    assert main(["calibrate", str(always_run), "--task", "smalldetail_read", "--max-loss", "0.03",
                 "--calib-fraction", "0.5", "--seed", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"tau", "score", "calib", "test", "model_args"} <= set(out)
    for part in ("calib", "test"):
        assert {"accuracy", "loss", "bytes", "flops", "retransmitted", "n"} <= set(out[part])
    assert out["calib"]["n"] + out["test"]["n"] == 150
    assert out["model_args"] == f"policy=threshold,threshold={out['tau']!r},score=max"
    # The same split and seed through the Python API give the same choice.
    samples, names, _ = real_samples(always_run)
    api = cal.calibrate(samples, names, cal.Target("loss", 0.03, 0.1), calib_fraction=0.5, seed=3)
    assert api.tau == out["tau"] and api.test.bytes == out["test"]["bytes"]
    # --test: another run as the test set (here the same run: calib and test outcomes agree).
    assert main(["calibrate", str(always_run), "--task", "smalldetail_read", "--max-bytes", "12000",
                 "--test", str(always_run)]) == 0
    text = capsys.readouterr().out
    assert "calib" in text and "test" in text and "--model_args policy=threshold" in text
    # Not an always run: a clear error, exit 2.
    never = tiny_llava_run("policy=never").out  # the session's never run of the tiny LLaVA (tests/conftest.py)
    assert main(["calibrate", str(never), "--task", "collab_pope_mini", "--max-loss", "0.03"]) == 2
    assert "policy=always" in capsys.readouterr().err
    # A task the run does not hold: a clear error, exit 2.
    assert main(["calibrate", str(always_run), "--task", "collab_pope_mini", "--max-loss", "0.03"]) == 2
    assert "no run of task 'collab_pope_mini'" in capsys.readouterr().err


@pytest.mark.slow
def test_report_shows_the_calibrated_point(always_run, tmp_path):
    from collab_eval.cli import main
    out = tmp_path / "report"
    assert main(["report", str(always_run), "--out", str(out), "--seeds", "0", "--calibrate",
                 "max-loss=0.03,seed=3"]) == 0
    systems = json.loads((out / "summary.json").read_text())["systems"]
    entry = systems["smalldetail-llava:png"]["tasks"]["smalldetail_read"]
    chosen = entry["calibrated"]
    samples, names, _ = real_samples(always_run)
    api = cal.calibrate(samples, names, cal.Target("loss", 0.03, 0.1), calib_fraction=0.5, seed=3)
    assert chosen["tau"] == api.tau and chosen["test"]["bytes"] == api.test.bytes
    # The whole run's point at that τ lies on the gated curve of the same summary.
    on_curve = [p for p in entry["curves"]["gated"] if p["tau"] == api.tau]
    assert on_curve and on_curve[0]["bytes"] == chosen["whole_run"]["bytes"]
    text = (out / "report.md").read_text()
    assert "Calibrated threshold" in text and f"{api.tau:.5g}" in text
    assert main(["report", str(always_run), "--out", str(tmp_path / "bad"), "--calibrate", "max-lose=0.03"]) == 2
