"""Accuracy/cost trade-offs derived exactly from one run that retransmitted every sample.

Pure arithmetic on per-sample arrays; no files, no models. A run with policy ``always`` has,
for every sample, the stage-1 answer and cost and the stage-2 answer and cost, so the
outcome of any gate (a set of samples to retransmit) follows without running a model:

- a sample that is not retransmitted scores its stage-1 answer and costs its stage-1
  bytes (the global image) and FLOPs (vision + projector + prefill + decode);
- a retransmitted one scores its stage-2 answer and costs everything, except that the
  generic-prompt attention pass is cached per image: it is paid once per cache group
  (an image within one process) in which at least one sample is retransmitted.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from operator import attrgetter

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from collab_eval.typed_json import Threshold, is_none

RATES = tuple(i / 20 for i in range(21))  # the grid the random baseline is tabulated on


@dataclass(frozen=True)
class Samples:
    """One task's samples from an ``always`` run, as parallel arrays."""
    acc1: np.ndarray  # per-sample accuracy of the stage-1 answer (task metric)
    acc2: np.ndarray  # per-sample accuracy of the stage-2 answer
    score: np.ndarray  # the gate's score; +inf where the record has null (empty answer)
    bytes1: np.ndarray  # bytes when not retransmitted: the global image
    bytes2: np.ndarray  # bytes when retransmitted: global + request + local
    flops1: np.ndarray  # FLOPs when not retransmitted: stage 1
    flops2: np.ndarray  # FLOPs when retransmitted, without the generic-prompt pass
    group: np.ndarray  # index of the sample's generic-prompt cache group
    generic: np.ndarray  # FLOPs of each group's generic-prompt pass
    keys: tuple[str, ...] = ()  # "task/doc_id", what the random policy hashes

    @classmethod
    def build(cls, acc1, acc2, score, bytes1, bytes2, flops1, flops2, group=None, generic=None, keys=()):
        n = len(acc1)
        score = np.array([math.inf if s is None else float(s) for s in score], dtype=float)
        if group is None:  # no caching: every sample its own group, pass cost folded into flops2
            group, generic = np.arange(n), np.zeros(n, dtype=np.int64)
        arrays = dict(acc1=np.asarray(acc1, dtype=float), acc2=np.asarray(acc2, dtype=float), score=score,
                      bytes1=np.asarray(bytes1, dtype=np.int64), bytes2=np.asarray(bytes2, dtype=np.int64),
                      flops1=np.asarray(flops1, dtype=np.int64), flops2=np.asarray(flops2, dtype=np.int64),
                      group=np.asarray(group, dtype=np.int64), generic=np.asarray(generic, dtype=np.int64))
        for name, array in arrays.items():
            if name != "generic" and len(array) != n:
                raise ValueError(f"{name} has {len(array)} entries, expected {n}")
        if n and np.isnan(score).any():
            raise ValueError("scores must not be NaN")
        return cls(**arrays, keys=tuple(keys))

    @property
    def n(self) -> int:
        return len(self.acc1)


class Point(BaseModel):
    """One operating point: means per sample over the task. In JSON (summary.json) a point
    without a threshold has no ``tau``; τ = ±inf is written "inf" / "-inf"."""
    model_config = ConfigDict(frozen=True)

    accuracy: float
    bytes: float
    flops: float
    rate: float  # fraction of samples retransmitted
    tau: Threshold | None = Field(default=None, exclude_if=is_none)  # threshold, for points of the gated curve


class BandStep(BaseModel):
    """Spread of accuracy over seeded random draws at one rate, at the rate's expected cost."""
    model_config = ConfigDict(frozen=True)

    rate: float
    bytes: float
    flops: float
    lo: float
    hi: float
    seeds: int


def point(s: Samples, retransmit: np.ndarray, tau: float | None = None) -> Point:
    """The outcome of retransmitting exactly the samples where ``retransmit`` is true."""
    retransmit = np.asarray(retransmit, dtype=bool)
    if s.n == 0:
        return Point(accuracy=math.nan, bytes=math.nan, flops=math.nan, rate=math.nan, tau=tau)
    nbytes = int(np.where(retransmit, s.bytes2, s.bytes1).sum())
    flops = int(np.where(retransmit, s.flops2, s.flops1).sum()) + int(s.generic[np.unique(s.group[retransmit])].sum())
    return Point(accuracy=accuracy(s, retransmit), bytes=nbytes / s.n, flops=flops / s.n,
                 rate=float(retransmit.sum()) / s.n, tau=tau)


def accuracy(s: Samples, retransmit: np.ndarray) -> float:
    """Mean accuracy when exactly the ``retransmit`` samples are retransmitted. The sum is
    exact before its one rounding, so it does not depend on the order of the samples."""
    return math.fsum(np.where(retransmit, s.acc2, s.acc1).tolist()) / s.n


def never(s: Samples) -> Point:
    return point(s, np.zeros(s.n, dtype=bool))


def always(s: Samples) -> Point:
    return point(s, np.ones(s.n, dtype=bool))


def threshold_curve(s: Samples) -> list[Point]:
    """The gate "retransmit iff score > tau" at every threshold that changes its decision:
    each distinct score value, and -inf (everything retransmitted). The first point
    retransmits only the samples above the highest score (none, or the +inf ones at
    tau=+inf). Ordered by tau descending, i.e. by cost ascending."""
    if s.n == 0:
        return []
    order = np.argsort(-s.score, kind="stable")
    values = s.score[order]
    # Samples enter in order of descending score; a tie enters together. After the
    # samples before ``end`` have entered, the threshold is the next score value.
    ends = np.flatnonzero(np.append(values[1:] != values[:-1], True)) + 1
    taus = [float(values[end]) if end < s.n else -math.inf for end in ends.tolist()]
    return prefix_points(s, order, [0, *ends.tolist()], [float(values[0]), *taus])


def point_after(s: Samples, order: np.ndarray, count: int, tau: float) -> Point:
    mask = np.zeros(s.n, dtype=bool)
    mask[order[:count]] = True
    return point(s, mask, tau)


def prefix_points(s: Samples, order: np.ndarray, counts, taus) -> list[Point]:
    """``point_after(s, order, count, tau)`` for every (count, tau), in time linear in the
    samples: each point retransmits a prefix of ``order``, so its sums are running sums
    along it. Equal to ``point`` number for number: integer sums are exact either way, and
    accuracy sums are exact before the one rounding (math.fsum's, in ``point``)."""
    counts = np.asarray(counts, dtype=np.int64)
    nbytes = int(s.bytes1.sum()) + np.concatenate([[0], np.cumsum((s.bytes2 - s.bytes1)[order])])[counts]
    # The generic pass of a cache group is paid from the first of its samples in the order on.
    first = np.zeros(len(order), dtype=np.int64)
    groups, at = np.unique(s.group[order], return_index=True)
    first[at] = s.generic[groups]
    flops = (int(s.flops1.sum()) + np.concatenate([[0], np.cumsum((s.flops2 - s.flops1)[order] + first)]))[counts]
    accuracy = exact_prefix_sums(s.acc1, s.acc2, order, counts)
    n = s.n
    return [Point(accuracy=a / n, bytes=int(b) / n, flops=int(f) / n, rate=int(c) / n, tau=t)
            for a, b, f, c, t in zip(accuracy, nbytes.tolist(), flops.tolist(), counts.tolist(), taus)]


def exact_prefix_sums(before: np.ndarray, after: np.ndarray, order: np.ndarray, counts) -> list[float]:
    """sum(after[order[:k]]) + sum(before[order[k:]]) for each k in ``counts``, each rounded
    once from the exact value (as math.fsum): floats are integer multiples of a power of two,
    so the running sums are done on those integers."""
    values = np.concatenate([before, after]).tolist()
    scale = max((v.as_integer_ratio()[1] for v in values), default=1)  # powers of two: the largest divides by all
    as_int = [v.as_integer_ratio() for v in values]
    as_int = [num * (scale // den) for num, den in as_int]
    n = len(before)
    steps = [as_int[n + i] - as_int[i] for i in order.tolist()]
    running = [sum(as_int[:n])]
    for step in steps:
        running.append(running[-1] + step)
    return [running[k] / scale for k in np.asarray(counts).tolist()]


def threshold_point(s: Samples, tau: float) -> Point:
    """The gated outcome at one threshold, directly (what a ``threshold`` run would give)."""
    return point(s, s.score > tau, tau)


def random_expected(s: Samples, rate: float) -> Point:
    """Expectation over the random policy's draws at ``rate``: each sample is retransmitted
    with probability p, so accuracy and bytes are (1-p)*stage1 + p*stage2 per sample; a
    cache group of k samples pays its generic pass with probability 1-(1-p)^k."""
    p = float(rate)
    accuracy = ((1 - p) * s.acc1 + p * s.acc2).sum() / s.n
    nbytes = ((1 - p) * s.bytes1.sum() + p * s.bytes2.sum()) / s.n
    sizes = np.bincount(s.group, minlength=len(s.generic))
    touched = 1 - (1 - p) ** sizes
    flops = ((1 - p) * s.flops1.sum() + p * s.flops2.sum() + (s.generic * touched).sum()) / s.n
    return Point(accuracy=float(accuracy), bytes=float(nbytes), flops=float(flops), rate=p)


def random_draw(s: Samples, rate: float, seed: int) -> Point:
    """What a ``random`` run at ``rate`` with ``seed`` retransmits: the same hash of
    (seed, task/doc_id) as collab_eval.policy, so the draw matches a real run exactly."""
    return point(s, draws(s, seed) < rate)


def draws(s: Samples, seed: int) -> np.ndarray:
    """Each sample's draw under ``seed``: ``collab_eval.policy.uniform(key, seed)`` for every
    key (the definition, which the tests hold this to), hashed in one pass: the first 8 bytes
    of each sha256 digest read as big-endian integers, divided by 2**64."""
    prefix = f"{seed}:".encode()
    digests = b"".join([hashlib.sha256(prefix + key.encode()).digest()[:8] for key in s.keys])
    return np.frombuffer(digests, dtype=">u8").astype(float) / 2**64


def random_band(s: Samples, rates=RATES, seeds=range(20), quantiles=(0.1, 0.9)) -> list[BandStep]:
    """Spread of accuracy over seeded draws at each rate (quantiles over seeds), placed at
    the rate's expected bytes and FLOPs. A sample's draw does not depend on the rate: each
    seed is hashed once for every rate."""
    per_seed = [draws(s, seed) for seed in seeds]
    band = []
    for rate in rates:
        acc = np.array([accuracy(s, u < rate) for u in per_seed])
        expected = random_expected(s, rate)  # placed at the expected cost of the rate
        band.append(BandStep(rate=rate, bytes=expected.bytes, flops=expected.flops,
                             lo=float(np.quantile(acc, quantiles[0])), hi=float(np.quantile(acc, quantiles[1])),
                             seeds=len(acc)))
    return band


def oracle_mask(s: Samples) -> np.ndarray:
    """Retransmit exactly where the stage-2 answer scores higher than the stage-1 answer."""
    return s.acc2 > s.acc1


def oracle_curve(s: Samples) -> list[Point]:
    """The oracle's samples added in order of accuracy gained per extra byte: the best any
    gate can do at each byte budget. Its last point is the oracle gate itself."""
    gainers = np.flatnonzero(oracle_mask(s))
    gain = (s.acc2 - s.acc1)[gainers]
    extra = np.maximum(s.bytes2 - s.bytes1, 0)[gainers].astype(float)
    order = gainers[np.lexsort((extra, -gain / np.maximum(extra, 1e-9)))]
    return prefix_points(s, order, range(len(order) + 1), [None] * (len(order) + 1))


def auroc(score, error) -> float | None:
    """Area under the ROC curve of ``score`` for detecting ``error`` (ties count half):
    the probability that a random wrong answer scores higher than a random right one.
    None when one of the two classes is empty."""
    score = np.array([math.inf if v is None else float(v) for v in score], dtype=float)
    error = np.asarray(error, dtype=bool)
    n_pos, n_neg = int(error.sum()), int((~error).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    pos, neg = np.sort(score[error]), np.sort(score[~error])
    below = np.searchsorted(neg, pos, side="left")
    ties = np.searchsorted(neg, pos, side="right") - below
    return float((below + 0.5 * ties).sum() / (n_pos * n_neg))


def best_within(points, budget: float, cost: str = "bytes") -> float:
    """Highest accuracy among operating points whose mean cost is within ``budget``;
    0.0 when no point is that cheap (the system cannot run on that budget)."""
    return Envelope(points, cost).best_within(budget)


class Envelope:
    """The best accuracy within each budget, for many budgets: the points sorted by cost
    with a running maximum of accuracy, so each budget is one binary search."""

    def __init__(self, points, cost: str = "bytes"):
        costs = np.array(list(map(attrgetter(cost), points)), dtype=float)
        accuracy = np.array(list(map(attrgetter("accuracy"), points)), dtype=float)
        order = np.argsort(costs, kind="stable")
        self.costs = costs[order]
        self.best = np.maximum.accumulate(accuracy[order]) if len(order) else accuracy

    def best_within(self, budget: float) -> float:
        return self.best_within_each([budget])[0]

    def best_within_each(self, budgets) -> list[float]:
        limits = np.array([b * (1 + 1e-12) for b in budgets], dtype=float)
        within = np.searchsorted(self.costs, limits, side="right")
        best = np.concatenate([[0.0], self.best])[within]  # none within: 0.0
        return best.tolist()


def mean_accuracy(points, lo: float, hi: float, cost: str = "bytes") -> float:
    """Area under the best-accuracy-within-budget step function over [lo, hi], divided
    by the width: the mean accuracy a user gets over that range of budgets."""
    if hi <= lo:
        return best_within(points, lo, cost)
    envelope = Envelope(points, cost)
    costs = envelope.costs
    steps = sorted({lo, hi, *costs[(costs > lo) & (costs < hi)].tolist()})
    best = envelope.best_within_each(steps[:-1])
    area = sum(acc * (b - a) for acc, a, b in zip(best, steps, steps[1:]))
    return area / (hi - lo)


def cheapest_reaching(points, target: float) -> Point | None:
    """The operating point with the fewest mean bytes whose accuracy reaches ``target``."""
    reaching = [p for p in points if p.accuracy >= target - 1e-12]
    return min(reaching, key=lambda p: (p.bytes, p.flops)) if reaching else None
