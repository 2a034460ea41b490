"""What a user waits for: the latency of a sample under a link, and the trade-offs on a time axis.

The definition (one function, ``sample_latency``), for a link with up-rate U, down-rate D (bits
per second) and round-trip time R, from a record's ``seconds`` and bytes:

- answered from the global image only (not retransmitted):
  ``edge_global + (R/2 + 8·bytes_global/U) + stage1 + R/2``
- retransmitted: that, plus
  ``[tiles] + roi + (R/2 + 8·bytes_request/D) + edge_local + (R/2 + 8·bytes_local/U) + stage2``
  where ``[tiles]``, for a sample whose locator had the edge send tiles of the original
  (``bytes_tiles`` > 0, highres), is the server's ask and the edge's upload of them before the
  locator maps them: ``R/2 + (R/2 + 8·bytes_tiles/U)`` (0 without tiles)

The last R/2 is the answer's way back (its bytes are not counted). A step missing from
``seconds`` (a failed sample, the tiles policy's missing ``roi``) takes 0 s. On a trace each
transfer takes R/2 plus as long as the trace's delivery opportunities from the moment it starts
need (``link.Trace.transfer_seconds``); the moment follows from the sample's start and the steps
before it. Samples do not queue behind each other: sample i of a task's n (ordered by doc_id)
starts at i·L/n on a trace of length L, so the samples are spread evenly over the trace (it
wraps around), and each sample's two latencies (stage 1 only, or everything) do not depend on
what the gate does with other samples. So, as for bytes, one ``always`` run gives every
threshold's latencies exactly (curves.py's rule: not retransmitted costs the stage-1 latency,
retransmitted the whole).

Options (``Costs``): the server's steps (``stage1``, ``roi``, ``stage2``) can be replaced by their
FLOPs over a stated throughput (stage 1: vision + projector + prefill + decode; roi: the
locator's own passes, ``locate`` (grad_att's and pure_grad's forward and backward passes, every
pass over highres tiles), plus the generic-prompt pass, ``generic``, 0 where it came from the
cache; stage 2: stage2), e.g. a run measured on a
CPU read for a GPU server; the edge's steps (``edge_global``, ``edge_local``) can be scaled by a
factor (a phone is slower than this machine).

Statistics over samples: the mean, and the 95th percentile by numpy's default (linear
interpolation between order statistics, ``np.percentile(x, 95)``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from collab_eval.analysis import curves
from collab_eval.analysis.curves import Samples
from collab_eval.analysis.link import Link
from collab_eval.records import STAGE1_PARTS, SampleRecord
from collab_eval.typed_json import Threshold, is_none

PERCENTILE = 95.0
SERVER_STEPS = ("stage1", "roi", "stage2")
EDGE_STEPS = ("edge_global", "edge_local")


@dataclass(frozen=True)
class Costs:
    """How the steps' seconds are taken: measured (default), the server's from FLOPs, the edge's scaled."""
    server_flops_per_second: float | None = None  # None: the measured server seconds
    edge_scale: float = 1.0

    def __post_init__(self):
        if self.server_flops_per_second is not None and not (self.server_flops_per_second > 0
                                                             and math.isfinite(self.server_flops_per_second)):
            raise ValueError(f"--server-flops-per-second must be a positive number, got {self.server_flops_per_second}")
        if not (self.edge_scale >= 0 and math.isfinite(self.edge_scale)):
            raise ValueError(f"--edge-scale must be a non-negative number, got {self.edge_scale}")


def step_seconds(record: SampleRecord, costs: Costs = Costs()) -> dict[str, float]:
    """Each step's seconds as the latency counts them: the record's, or as ``costs`` replaces them."""
    seconds = {step: float(record.seconds.get(step, 0.0)) for step in (*EDGE_STEPS, *SERVER_STEPS)}
    for step in EDGE_STEPS:
        seconds[step] *= costs.edge_scale
    if costs.server_flops_per_second is not None:
        flops = record.flops
        seconds["stage1"] = sum(flops.get(part, 0) for part in STAGE1_PARTS) / costs.server_flops_per_second
        seconds["roi"] = (flops.get("generic", 0) + flops.get("locate", 0)) / costs.server_flops_per_second
        seconds["stage2"] = flops.get("stage2", 0) / costs.server_flops_per_second
    return seconds


def sample_latency(record: SampleRecord, link: Link, retransmitted: bool, start: float = 0.0,
                   costs: Costs = Costs()) -> float:
    """THE latency of one sample, in seconds (module docstring), starting at ``start`` on the link's clock."""
    s = step_seconds(record, costs)
    half = link.rtt / 2
    t = start + s["edge_global"]
    t += half + link.up.transfer_seconds(record.bytes_global, t)
    t += s["stage1"]
    if retransmitted:
        if record.bytes_tiles:  # highres: the server asks for the tiles, the edge uploads them
            t += half
            t += half + link.up.transfer_seconds(record.bytes_tiles, t)
        t += s["roi"]
        t += half + link.down.transfer_seconds(record.bytes_request, t)
        t += s["edge_local"]
        t += half + link.up.transfer_seconds(record.bytes_local, t)
        t += s["stage2"]
    t += half  # the answer's way back
    return t - start


def start_times(records: list[SampleRecord], link: Link) -> np.ndarray:
    """Where each sample starts on the link's clock: spread evenly over a trace's length in
    doc_id order (0 for all on a constant link)."""
    n = len(records)
    length = link.trace_length
    starts = np.zeros(n)
    if n and length > 0:
        order = sorted(range(n), key=lambda i: (records[i].doc_id, i))
        for position, i in enumerate(order):
            starts[i] = position * length / n
    return starts


@dataclass(frozen=True)
class Latencies:
    """Per sample: seconds when answered from stage 1 only, and when retransmitted."""
    stage1: np.ndarray
    whole: np.ndarray

    @classmethod
    def of(cls, records: list[SampleRecord], link: Link, costs: Costs = Costs()) -> "Latencies":
        starts = start_times(records, link)
        return cls(np.array([sample_latency(r, link, False, t, costs) for r, t in zip(records, starts)]),
                   np.array([sample_latency(r, link, True, t, costs) for r, t in zip(records, starts)]))

    def of_gate(self, retransmit: np.ndarray) -> np.ndarray:
        return np.where(np.asarray(retransmit, dtype=bool), self.whole, self.stage1)

    def subset(self, index: np.ndarray) -> "Latencies":
        return Latencies(self.stage1[index], self.whole[index])


def p95(values: np.ndarray) -> float:
    return float(np.percentile(values, PERCENTILE)) if len(values) else math.nan


# ----- points and curves --------------------------------------------------------------------
class LatencyPoint(BaseModel):
    """One operating point: accuracy, retransmission rate, mean and p95 latency (seconds)."""
    model_config = ConfigDict(frozen=True)

    accuracy: float
    rate: float
    mean: float
    p95: float
    tau: Threshold | None = Field(default=None, exclude_if=is_none)


def latency_point(s: Samples, lat: Latencies, retransmit: np.ndarray, tau: float | None = None,
                  accuracy: float | None = None) -> LatencyPoint:
    """The outcome of retransmitting exactly the ``retransmit`` samples (``accuracy``: already
    known, e.g. from the bytes curve's same point)."""
    retransmit = np.asarray(retransmit, dtype=bool)
    each = lat.of_gate(retransmit)
    return LatencyPoint(accuracy=curves.accuracy(s, retransmit) if accuracy is None else accuracy,
                        rate=float(retransmit.mean()), mean=float(each.mean()), p95=p95(each), tau=tau)


def gated_curve(s: Samples, lat: Latencies) -> list[LatencyPoint]:
    """The entropy gate at every threshold of curves.threshold_curve (same points, same accuracy), with
    its latencies. Linear in the samples per point: 9,000 samples take about a second per profile."""
    return [latency_point(s, lat, s.score > p.tau, p.tau, p.accuracy) for p in curves.threshold_curve(s)]


def random_curve(s: Samples, lat: Latencies, seeds: int = 20) -> list[LatencyPoint]:
    """Random retransmission at curves.RATES: accuracy and mean latency are the expectation over
    the draws ((1-p)·stage 1 + p·whole per sample, as for bytes); p95 is the mean over ``seeds``
    seeded draws (the random policy's own hash) of each draw's p95."""
    draws = [curves.draws(s, seed) for seed in range(seeds)]
    out = []
    for rate in curves.RATES:
        expected = curves.random_expected(s, rate)
        mean = float(((1 - rate) * lat.stage1 + rate * lat.whole).mean())
        tail = float(np.mean([p95(lat.of_gate(u < rate)) for u in draws])) if draws else math.nan
        out.append(LatencyPoint(accuracy=expected.accuracy, rate=rate, mean=mean, p95=tail))
    return out


def oracle_curve(s: Samples, lat: Latencies) -> list[LatencyPoint]:
    """The oracle's samples (stage 2 scores higher) added in order of accuracy gained per extra
    second: the best any gate can do at each mean-latency budget."""
    gainers = np.flatnonzero(curves.oracle_mask(s))
    gain = (s.acc2 - s.acc1)[gainers]
    extra = np.maximum(lat.whole - lat.stage1, 0)[gainers]
    order = gainers[np.lexsort((extra, -gain / np.maximum(extra, 1e-12)))]
    accuracy = curves.exact_prefix_sums(s.acc1, s.acc2, order, range(len(order) + 1))
    out = []
    mask = np.zeros(s.n, dtype=bool)
    for count, acc in enumerate(accuracy):
        if count:
            mask[order[count - 1]] = True
        out.append(latency_point(s, lat, mask, accuracy=acc / s.n))
    return out


class LatencyProfile(BaseModel):
    """One task of one system under one link profile (summary.json: ``latency[SPEC]``)."""
    link: str  # the --link spec
    description: str  # the link in words (rates, RTT, trace length)
    server_flops_per_second: float | None = None  # None: measured server seconds
    edge_scale: float = 1.0
    placement: str  # how samples start on the link's clock
    n: int
    never: LatencyPoint
    always: LatencyPoint
    oracle: LatencyPoint
    target_accuracy: float
    reach_target: LatencyPoint | None = None  # the gate's point of least mean latency reaching the target
    gated: list[LatencyPoint]  # every threshold of the gated curve, in its order
    random: list[LatencyPoint] = Field(default_factory=list)
    oracle_curve: list[LatencyPoint] = Field(default_factory=list)


def placement_text(link: Link) -> str:
    if link.trace_length > 0:
        return (f"samples in doc_id order start evenly spread over the trace's {link.trace_length:g} s "
                "(sample i of n at i·length/n; the trace wraps around)")
    return "constant link: the start does not matter"


def profile(s: Samples, records: list[SampleRecord], link: Link, costs: Costs, target_fraction: float,
            seeds: int = 20) -> LatencyProfile:
    lat = Latencies.of(records, link, costs)
    never = latency_point(s, lat, np.zeros(s.n, bool), math.inf)
    always = latency_point(s, lat, np.ones(s.n, bool), -math.inf)
    gated = gated_curve(s, lat)
    target = target_fraction * always.accuracy
    reaching = [p for p in gated if p.accuracy >= target - 1e-12]
    return LatencyProfile(
        link=link.spec, description=link.describe(), server_flops_per_second=costs.server_flops_per_second,
        edge_scale=costs.edge_scale, placement=placement_text(link), n=s.n, never=never, always=always,
        oracle=latency_point(s, lat, curves.oracle_mask(s)), target_accuracy=target,
        reach_target=min(reaching, key=lambda p: (p.mean, p.p95)) if reaching else None,
        gated=gated, random=random_curve(s, lat, seeds), oracle_curve=oracle_curve(s, lat))


def annotate(summary, links: list[Link], costs: Costs = Costs()) -> None:
    """Add ``latency`` (one LatencyProfile per link spec) to every task of the summary that has
    an always run."""
    for view in summary.views:
        entry = summary.systems[view.system].tasks[view.task]
        entry.latency = {link.spec: profile(view.samples, view.records, link, costs,
                                            summary.settings.target_fraction) for link in links}
