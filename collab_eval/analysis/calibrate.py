"""Choosing τ for a deployment, with a finite-sample guarantee (Learn-then-Test).

From an ``always`` run every threshold's outcome is known per sample (curves.py). Here the
samples are split by image into a calibration part, where τ is chosen, and an optional test
part, where the choice is scored as new data would score it.

Method: Learn-then-Test (Angelopoulos, Bates et al. 2021) with fixed-sequence testing. For a
target "at most ε" every threshold τ has the null hypothesis H_τ: "the expected value on new
images exceeds ε". The thresholds are tested in a fixed order, from the safe end (most
retransmission for a loss target, least for a cost target), each at level δ, and testing stops
at the first one not rejected. With probability at least 1 - δ over the calibration images,
no threshold with a true H_τ is passed (only the first true null in the order can be, and only
with probability δ), so every passed τ meets the target on the distribution the images came
from. The assumption: calibration and new images are exchangeable (drawn from one distribution).

The unit is the image (questions on one image share its content and are not independent):
an image's value is the mean over its questions, and new data means new images.

p-values:
- loss against always, per image in [-1, 1]: an exact test for the mean of a variable in
  {-1, 0, 1} (a trinomial: the +1s are answers lost by not retransmitting, the -1s answers that
  stage 2 would have broken), maximised over the nuisance parameter, and randomised with one
  uniform draw. Fractional losses (TextVQA's 1/3 steps, images with several questions) are
  first rounded at random to -1/0/+1 with the same mean, which keeps the test exact. Why
  randomised: with n images a deterministic test can never pass a threshold whose
  calibration losses are all 0 unless (1 - ε)^n <= δ (n >= 76 for ε = 0.03, δ = 0.1), because
  a distribution losing ε of its answers shows no loss in n draws that often. The randomised
  p-value spends exactly δ instead of wasting the discreteness.
- mean bytes or FLOPs per image: a betting test (Waudby-Smith and Ramdas) for a variable in
  [0, 1], after scaling the cost by the range seen in calibration (an assumption too: new
  images cost within it). Tighter than Hoeffding-Bentkus, as it adapts to the variance.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import optimize, stats

from collab_eval.analysis import curves
from collab_eval.analysis.curves import Point, Samples
from collab_eval.analysis.latency import Latencies, p95
from collab_eval.analysis.views import image_name, settings_of, system_of, task_view
from collab_eval.records import SampleRecord
from collab_eval.systems import system_key
from collab_eval.typed_json import Threshold, is_none

TARGETS = {"max-loss": "loss", "max-bytes": "bytes", "max-flops": "flops", "max-latency": "latency"}
LATENCY_STATS = ("mean", "p95")
TAIL = 0.05  # p95: at most this fraction of samples over the limit
METHOD = "learn-then-test (fixed sequence)"


@dataclass(frozen=True)
class Target:
    kind: str  # "loss" (accuracy lost against always), "bytes", "flops" or "latency" (per sample)
    limit: float  # ε, or the budget B / F / seconds
    delta: float = 0.1
    stat: str = "mean"  # latency: bound its mean, or its 95th percentile (at most 5% of samples over the limit)

    def __post_init__(self):
        if self.kind not in TARGETS.values():
            raise ValueError(f"target must be one of {sorted(TARGETS)}, got {self.kind!r}")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")
        if not math.isfinite(self.limit):
            raise ValueError(f"the {self.kind} limit must be a finite number, got {self.limit}")
        if self.stat not in LATENCY_STATS:
            raise ValueError(f"the latency statistic must be one of {list(LATENCY_STATS)}, got {self.stat!r}")

    @property
    def name(self) -> str:
        return next(k for k, v in TARGETS.items() if v == self.kind)


class LatencyResult(BaseModel):
    """The chosen threshold's latency on one part, seconds per sample (calibrate --max-latency)."""
    model_config = ConfigDict(frozen=True)

    link: str
    mean: float
    p95: float
    always_mean: float
    always_p95: float
    never_mean: float
    never_p95: float


class PartResult(BaseModel):
    """The chosen threshold's result on one part of the samples (calibration or test), means per sample."""
    model_config = ConfigDict(frozen=True)

    accuracy: float
    loss: float  # always's accuracy minus this accuracy, on the same samples
    bytes: float
    flops: float
    retransmitted: float  # fraction of samples
    n: int  # samples
    images: int
    always_accuracy: float
    always_bytes: float
    always_flops: float
    latency: LatencyResult | None = Field(default=None, exclude_if=is_none)  # --max-latency


class Calibration(BaseModel):
    """The chosen threshold and how it did: calibrate's --json output, and (with ``whole_run``,
    the threshold's point on the whole run) a task's ``calibrated`` entry in summary.json."""
    model_config = ConfigDict(frozen=True)

    task: str
    system: str
    target: str  # max-loss, max-bytes, max-flops or max-latency
    limit: float  # ε, or the budget B / F / seconds
    delta: float
    latency_stat: str | None = Field(default=None, exclude_if=is_none)  # max-latency: mean or p95
    link: str | None = Field(default=None, exclude_if=is_none)  # max-latency: the --link spec
    method: str = METHOD
    tau: Threshold
    score: str  # the score aggregate the gate uses (max / mean / first)
    feasible: bool  # False: no threshold passed; tau is the safe end (always / never)
    p_value: float | None  # of the chosen threshold (None for the safe end, which needs no test)
    tested: int  # thresholds tested before the sequence stopped
    seed: int
    calib_fraction: float | None
    calib: PartResult
    test: PartResult | None
    model_args: str  # the lmms-eval model_args that run the chosen gate
    whole_run: Point | None = Field(default=None, exclude_if=is_none)  # report --calibrate

    @property
    def goal(self) -> Target:
        return Target(TARGETS[self.target], self.limit, self.delta, self.latency_stat or "mean")


def gate_args(tau: float, score: str) -> str:
    return f"policy=threshold,threshold={tau!r},score={score}"


# ----- p-values ------------------------------------------------------------------------
def loss_p_value(n: int, n_plus: int, n_minus: int, eps: float, u: float = 1.0) -> float:
    """p-value of H0: E[L] >= eps for n i.i.d. L in {-1, 0, 1}, seen n_plus times +1 and n_minus
    times -1 (an exact unconditional test, like Barnard's). The statistic is studentised,
    S = (n eps - (n_plus - n_minus)) / sqrt(n_plus + n_minus + 1): large S speaks against H0,
    and few nonzero losses are strong evidence (a plain difference would not tell "no losses
    at all" from "many losses that cancel"). The p-value is the supremum over H0 of
    P(S > s) + u P(S = s): u = 1 is the conservative deterministic test, u ~ Uniform(0, 1) the
    exact randomised one. The supremum lies on the boundary p+ - p- = eps (moving mass from +1
    to 0 only raises S), over the nuisance p-, found on a grid and refined."""
    if n == 0 or eps <= -1:
        return 1.0
    if eps >= 1:
        return 0.0  # a mean above 1 is impossible
    tail, grid, strict, ties = _null_tails(n, n_plus, n_minus, eps)
    values = strict + u * ties
    best = int(np.argmax(values))
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    refined = optimize.minimize_scalar(lambda p: -sum(x * w for x, w in zip(tail(p), (1, u))), bounds=(a, b),
                                       method="bounded", options={"xatol": 1e-10}) if b > a else None
    return float(min(1.0, max(values[best], -refined.fun if refined is not None else 0.0)))


@lru_cache(maxsize=4096)
def _null_tails(n: int, n_plus: int, n_minus: int, eps: float):
    """P(S > s) and P(S = s) on the null boundary, as a function of the nuisance p- and on a grid of it."""
    s = (n * eps - (n_plus - n_minus)) / math.sqrt(n_plus + n_minus + 1)
    k = np.arange(n + 1)
    # Given k nonzero losses of which a are +1, S > s  <=>  a < c_k (S falls as a grows).
    c = (n * eps + k - s * np.sqrt(k + 1)) / 2
    above = np.ceil(c - 1e-9) - 1  # the largest a with S > s
    at_least = np.floor(c + 1e-9)  # the largest a with S >= s

    def tail(p_minus):
        p_minus = np.atleast_1d(np.asarray(p_minus, dtype=float))[:, None]
        p_plus = p_minus + eps
        q = p_plus + p_minus
        safe_q = np.where(q > 0, q, 1.0)
        weight = np.where(q > 0, stats.binom.pmf(k, n, safe_q), (k == 0).astype(float))  # q = 0: no losses at all
        r = np.where(q > 0, p_plus / safe_q, 1.0)
        strict = stats.binom.cdf(above, k, r)
        tie = stats.binom.cdf(at_least, k, r) - strict
        return (weight * strict).sum(axis=1).squeeze(), (weight * tie).sum(axis=1).squeeze()

    lo, hi = max(0.0, -eps), (1 - eps) / 2
    grid = np.unique(np.concatenate([np.linspace(lo, hi, 41), lo + (hi - lo) * np.geomspace(1e-5, 1, 40)]))
    strict, ties = tail(grid)
    return tail, grid, strict, ties


def betting_p_value(x: np.ndarray, m: float, delta: float, c: float = 0.75) -> float:
    """p-value of H0: E[X] >= m for i.i.d. X in [0, 1], seen in the order given: one over the
    largest capital of a bettor against H0, who bets lambda_t (m - X_t) with lambda_t from the
    earlier values only (Waudby-Smith and Ramdas, "Estimating means of bounded random variables
    by betting", 2023, predictable plug-in). Under H0 the capital is a nonnegative
    supermartingale, so by Ville's inequality P(p <= delta) <= delta; it adapts to the variance,
    so a cost that varies little gets a narrow margin."""
    x = np.asarray(x, dtype=float)
    n = len(x)
    if n == 0 or m <= 0:
        return 1.0
    if m >= 1:
        return 0.0 if (x < 1).any() else 1.0  # a mean of 1 means X = 1 always
    t = np.arange(1, n + 1)
    before = np.concatenate([[0.0], np.cumsum(x)[:-1]])
    mean = (0.5 + before) / t  # the running estimate before X_t
    spread = 0.25 + np.concatenate([[0.0], np.cumsum((x - mean) ** 2)[:-1]])
    bet = np.minimum(np.sqrt(2 * math.log(1 / delta) / (n * spread / t)), c / (1 - m))
    capital = np.cumsum(np.log1p(bet * (m - x)))
    return float(min(1.0, math.exp(-max(0.0, capital.max()))))


# ----- per image -----------------------------------------------------------------------
def per_image(s: Samples, image: np.ndarray, n_images: int, retransmit: np.ndarray):
    """Per image: mean loss against always, mean bytes, mean FLOPs (the generic-prompt pass
    paid once per cache group with a retransmitted sample, charged to that sample's image)."""
    count = np.bincount(image, minlength=n_images)
    loss = np.bincount(image, np.where(retransmit, 0.0, s.acc2 - s.acc1), n_images) / count
    nbytes = np.bincount(image, np.where(retransmit, s.bytes2, s.bytes1).astype(float), n_images) / count
    flops = np.bincount(image, np.where(retransmit, s.flops2, s.flops1).astype(float), n_images)
    groups, first = np.unique(s.group[retransmit], return_index=True)
    np.add.at(flops, image[retransmit][first], s.generic[groups])
    return loss, nbytes, flops / count


def subset(s: Samples, index: np.ndarray) -> Samples:
    arrays = {name: getattr(s, name)[index] for name in ("acc1", "acc2", "score", "bytes1", "bytes2",
                                                         "flops1", "flops2", "group")}
    return Samples(**arrays, generic=s.generic, keys=tuple(s.keys[i] for i in index) if s.keys else ())


# ----- choosing τ ----------------------------------------------------------------------
@dataclass(frozen=True)
class Choice:
    tau: float
    feasible: bool
    p_value: float | None
    tested: int


def latency_per_image(image: np.ndarray, n_images: int, each: np.ndarray, target: Target) -> np.ndarray:
    """Per image: the mean latency of its samples, or (p95) the fraction of them over the limit."""
    count = np.bincount(image, minlength=n_images)
    values = each if target.stat == "mean" else (each > target.limit).astype(float)
    return np.bincount(image, values, n_images) / count


def learn_then_test(s: Samples, image: np.ndarray, target: Target, rng: np.random.Generator,
                    randomise: bool = True, latency: Latencies | None = None) -> Choice:
    """Fixed-sequence testing over the calibration samples' own score values (each one a
    threshold; between two of them the decisions do not change). ``image`` numbers each
    sample's image 0..m-1."""
    n_images = int(image.max()) + 1 if len(image) else 0
    taus = np.unique(s.score[np.isfinite(s.score)])  # +inf (empty answers) is always retransmitted
    u = rng.uniform() if randomise else 1.0
    rounding = rng.uniform(size=n_images)  # one draw per image, shared by every threshold
    # The betting test reads the images in a random order: the runs' order (by document) may
    # follow image size or content, which would make early bets unrepresentative.
    shuffle = rng.permutation(n_images)
    if target.kind == "loss":
        order, safe = taus, -math.inf  # most retransmission first
    elif target.kind == "latency":
        order, safe = taus[::-1], math.inf  # least retransmission first
        if target.stat == "mean":  # mean latency per image, within the range seen in calibration
            lo = float(latency_per_image(image, n_images, latency.stage1, target).min())
            hi = float(latency_per_image(image, n_images, latency.whole, target).max())
            budget = target.limit
        else:  # H0: more than 5% of new samples over the limit; per image a fraction in [0, 1]
            lo, hi, budget = 0.0, 1.0, TAIL
    else:
        order, safe = taus[::-1], math.inf  # least retransmission first
        always_cost = per_image(s, image, n_images, np.ones(s.n, dtype=bool))[1 if target.kind == "bytes" else 2]
        never_cost = per_image(s, image, n_images, np.zeros(s.n, dtype=bool))[1 if target.kind == "bytes" else 2]
        lo, hi = float(never_cost.min()), float(always_cost.max())
    passed: list[tuple[float, float]] = []
    cache: dict = {}
    tested = 0
    for tau in order:
        loss, nbytes, flops = per_image(s, image, n_images, s.score > tau)
        tested += 1
        if target.kind == "loss":
            rounded = np.sign(loss) * (rounding < np.abs(loss))  # same mean, values in {-1, 0, 1}
            key = (int((rounded > 0).sum()), int((rounded < 0).sum()))
            if key not in cache:
                cache[key] = loss_p_value(n_images, *key, target.limit, u)
            p = cache[key]
        elif target.kind == "latency":
            cost = latency_per_image(image, n_images, latency.of_gate(s.score > tau), target)
            p = cost_p_value(cost[shuffle], lo, hi, budget, target.delta)
        else:
            cost = nbytes if target.kind == "bytes" else flops
            p = cost_p_value(cost[shuffle], lo, hi, target.limit, target.delta)
        if p > target.delta:
            break
        passed.append((float(tau), p))
    if not passed:
        return Choice(safe, False, None, tested)
    if target.kind == "loss":
        tau, p = passed[-1]  # the fewest retransmissions that passed
    else:  # the most accurate that passed (on calibration); ties: fewer retransmissions
        acc = {tau: curves.point(s, s.score > tau).accuracy for tau, _ in passed}
        tau, p = max(passed, key=lambda tp: (acc[tp[0]], tp[0]))
    return Choice(tau, True, p, tested)


def cost_p_value(cost: np.ndarray, lo: float, hi: float, budget: float, delta: float) -> float:
    """H0: mean cost per image > budget, for costs assumed within [lo, hi]."""
    if budget >= hi:
        return 0.0
    if budget < lo or hi <= lo:
        return 1.0
    return betting_p_value((cost - lo) / (hi - lo), (budget - lo) / (hi - lo), delta)


# ----- splitting and scoring -----------------------------------------------------------
def image_names(records: list[SampleRecord]) -> list[str]:
    """Which image each sample asks about: the document's image id or source, else the
    record's image_key (hash of the global image), else the sample itself."""
    return [image_name(r) or r.image_key or f"{r.task}/{r.doc_id}" for r in records]


def numbered(names) -> np.ndarray:
    ids: dict = {}
    return np.array([ids.setdefault(name, len(ids)) for name in names], dtype=np.int64)


def split_by_image(names: list[str], fraction: float, rng: np.random.Generator) -> np.ndarray:
    """True for the calibration samples: a random ``fraction`` of the images (at least one
    image on each side), every question on an image on the same side."""
    if not 0 < fraction < 1:
        raise ValueError(f"--calib-fraction must be strictly between 0 and 1, got {fraction}")
    unique = sorted(set(names))
    if len(unique) < 2:
        raise ValueError(f"cannot split {len(unique)} image(s) into calibration and test parts")
    shuffled = rng.permutation(len(unique))
    count = min(max(round(fraction * len(unique)), 1), len(unique) - 1)
    chosen = {unique[i] for i in shuffled[:count]}
    return np.array([name in chosen for name in names], dtype=bool)


def part_result(s: Samples, names: list[str], tau: float, latency: Latencies | None = None,
                link: str = "") -> PartResult:
    gated, always = curves.threshold_point(s, tau), curves.always(s)
    timed = None
    if latency is not None:
        each = latency.of_gate(s.score > tau)
        timed = LatencyResult(link=link, mean=float(each.mean()), p95=p95(each),
                              always_mean=float(latency.whole.mean()), always_p95=p95(latency.whole),
                              never_mean=float(latency.stage1.mean()),
                              never_p95=p95(latency.stage1))
    return PartResult(accuracy=gated.accuracy, loss=always.accuracy - gated.accuracy, bytes=gated.bytes,
                      flops=gated.flops, retransmitted=gated.rate, n=s.n, images=len(set(names)),
                      always_accuracy=always.accuracy, always_bytes=always.bytes, always_flops=always.flops,
                      latency=timed)


def calibrate(samples: Samples, names: list[str], target: Target, *, task: str = "", system: str = "",
              score: str = "max", calib_fraction: float | None = None, seed: int = 0,
              test: tuple[Samples, list[str]] | None = None, randomise: bool = True,
              latency: Latencies | None = None, test_latency: Latencies | None = None,
              link: str | None = None) -> Calibration:
    """Choose τ on the calibration samples and score it on the test samples: the held-out
    images of ``samples`` when ``calib_fraction`` is given, else ``test`` (another run), else none.
    A latency target needs ``latency`` (each sample's latencies under ``link``; latency.py), and
    ``test_latency`` with ``test``."""
    if samples.n == 0:
        raise ValueError(f"no samples of task {task!r} to calibrate on")
    if target.kind == "latency" and (latency is None or (test is not None and test_latency is None)):
        raise ValueError("a latency target needs a link (--link SPEC) to time the samples on")
    rng = np.random.default_rng(seed)
    calib_index = np.arange(samples.n)
    if calib_fraction is not None:
        if test is not None:
            raise ValueError("give either --calib-fraction or --test, not both")
        mask = split_by_image(names, calib_fraction, rng)
        calib_index, test_index = np.flatnonzero(mask), np.flatnonzero(~mask)
        test = (subset(samples, test_index), [names[i] for i in test_index])
        test_latency = latency.subset(test_index) if latency is not None else None
    cal = subset(samples, calib_index)
    cal_names = [names[i] for i in calib_index]
    cal_latency = latency.subset(calib_index) if latency is not None else None
    choice = learn_then_test(cal, numbered(cal_names), target, rng, randomise, cal_latency)
    timed = target.kind == "latency"
    return Calibration(task=task, system=system, target=target.name, limit=target.limit, delta=target.delta,
                       latency_stat=target.stat if timed else None, link=link if timed else None,
                       tau=choice.tau, score=score, feasible=choice.feasible, p_value=choice.p_value,
                       tested=choice.tested, seed=seed, calib_fraction=calib_fraction,
                       calib=part_result(cal, cal_names, choice.tau, cal_latency, link or ""),
                       test=part_result(*test, choice.tau, test_latency, link or "") if test else None,
                       model_args=gate_args(choice.tau, score))


# ----- from runs -----------------------------------------------------------------------
def always_records(runs, task: str, where: str) -> list[SampleRecord]:
    """The records of ``task`` from the always runs among ``runs``; a clear error otherwise."""
    chosen = [run for run in runs if run.policy == "always" and task in run.tasks]
    if not chosen:
        others = sorted({f"{run.name} (policy {run.policy})" for run in runs if task in run.tasks})
        if others:
            raise ValueError(f"{where}: no policy=always run of task {task!r}, only {', '.join(others)}; calibrating "
                             "needs a run that retransmitted every sample, so every threshold's outcome is known")
        raise ValueError(f"{where}: no run of task {task!r} (tasks there: "
                         f"{sorted({t for run in runs for t in run.tasks})})")
    records = [r for run in chosen for r in run.records if r.task == task]
    systems = {system_key(system_of([r])[0], settings_of([r])) for r in records}  # checkpoint and settings
    if len(systems) > 1:
        raise ValueError(f"{where}: the always runs of {task!r} are of several systems {sorted(systems)}; "
                         "calibrate one system (checkpoint and settings) at a time")
    return records


def samples_of(records: list[SampleRecord], task: str, score: str | None,
               scorer) -> tuple[Samples, list[str], str, str]:
    """Samples with the chosen score aggregate, the image of each, the system and the aggregate."""
    checkpoint, codec = system_of(records)
    view = task_view(f"{checkpoint}:{codec}", task, records, scorer)
    score = score or records[0].score_name
    if score != records[0].score_name:
        if score not in view.scores:
            raise ValueError(f"score {score!r} is not recorded for every sample of {task!r} "
                             f"(have {sorted(view.scores)})")
        return replace(view.samples, score=view.scores[score]), image_names(records), view.system, score
    return view.samples, image_names(records), view.system, score


# ----- text ----------------------------------------------------------------------------
def calibration_table(c: Calibration) -> str:
    t = c.goal
    limit = {"loss": f"{t.limit:g} ({100 * t.limit:g} points of accuracy against always)",
             "bytes": f"{t.limit:g} bytes per sample", "flops": f"{t.limit:g} FLOPs per sample",
             "latency": f"{t.limit:g} s {t.stat} latency per sample under --link {c.link}"}[t.kind]
    lines = [f"{c.task} on {c.system}, gate score {c.score}: {t.name} {limit}, "
             f"with probability >= {1 - t.delta:g} (Learn-then-Test, {c.tested} threshold(s) tested)"]
    if c.feasible:
        lines.append(f"tau = {c.tau!r} (p = {c.p_value:.3g})")
    else:
        end = "always (tau = -inf)" if t.kind == "loss" else "never (tau = +inf), the cheapest, itself not guaranteed"
        lines.append(f"NO FEASIBLE THRESHOLD: no tau passed the test on the calibration images; falling back to {end}")
    lines.append(f"--model_args {c.model_args}")
    head = f"{'part':<6} {'images':>6} {'samples':>7} {'retransmitted':>13} {'accuracy':>8} {'always':>7} " \
           f"{'loss':>7} {'bytes':>9} {'always':>9} {'GFLOPs':>8} {'always':>8}"
    lines += ["", head]
    for name, o in (("calib", c.calib), ("test", c.test)):
        if o is None:
            continue
        lines.append(f"{name:<6} {o.images:>6} {o.n:>7} {100 * o.retransmitted:>12.1f}% {100 * o.accuracy:>8.1f} "
                     f"{100 * o.always_accuracy:>7.1f} {100 * o.loss:>+7.1f} {o.bytes:>9,.0f} {o.always_bytes:>9,.0f} "
                     f"{o.flops / 1e9:>8.4g} {o.always_flops / 1e9:>8.4g}")
    for name, o in (("calib", c.calib), ("test", c.test)):
        if o is not None and o.latency is not None:
            x = o.latency
            lines.append(f"{name:<6} latency under {x.link}: mean {x.mean:.3f} s, p95 {x.p95:.3f} s (never "
                         f"{x.never_mean:.3f} / {x.never_p95:.3f} s, "
                         f"always {x.always_mean:.3f} / {x.always_p95:.3f} s)")
    lines.append("(accuracy and loss in points; bytes and FLOPs are means per sample; 'always' columns: the same "
                 "samples all retransmitted)")
    return "\n".join(lines)


# ----- in the report -------------------------------------------------------------------
def parse_spec(text: str) -> tuple[Target, float, int]:
    """``max-loss=0.02[,delta=0.1][,calib-fraction=0.5][,seed=0]`` (report --calibrate)."""
    fields = dict(part.split("=", 1) if "=" in part else (part, "") for part in text.split(",") if part.strip())
    if "max-latency" in fields:
        raise ValueError(f"--calibrate {text!r}: report --calibrate takes max-loss, max-bytes or max-flops; for a "
                         "latency limit use collab-eval calibrate --max-latency SECONDS --link SPEC")
    goals = [k for k in fields if k in TARGETS]
    unknown = set(fields) - set(TARGETS) - {"delta", "calib-fraction", "seed"}
    if len(goals) != 1 or unknown:
        raise ValueError(f"--calibrate {text!r}: expected one of {sorted(TARGETS)}=VALUE, optionally with "
                         f",delta=D,calib-fraction=F,seed=S{f' (unknown: {sorted(unknown)})' if unknown else ''}")
    try:
        target = Target(TARGETS[goals[0]], float(fields[goals[0]]), float(fields.get("delta", 0.1)))
        return target, float(fields.get("calib-fraction", 0.5)), int(fields.get("seed", 0))
    except ValueError as err:
        raise ValueError(f"--calibrate {text!r}: {err}") from None


def annotate(summary, spec: str) -> None:
    """Calibrate every always run's task as ``spec`` says (on a split by image) and add the
    result, with the chosen τ's point on the whole run, to the summary as ``calibrated``."""
    target, fraction, seed = parse_spec(spec)
    for view in summary.views:
        result = calibrate(view.samples, image_names(view.records), target, task=view.task, system=view.system,
                           score=view.records[0].score_name, calib_fraction=fraction, seed=seed)
        whole = curves.threshold_point(view.samples, result.tau)
        summary.systems[view.system].tasks[view.task].calibrated = result.model_copy(update={"whole_run": whole})
