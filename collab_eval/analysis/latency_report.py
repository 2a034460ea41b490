"""The report's latency sections (``collab-eval report --link``): per task and link profile, a
table (never, always, the gate's point reaching the target) and a figure (accuracy against mean
and 95th-percentile latency). The numbers come from summary.json's ``latency`` entries
(latency.py); report.py calls ``section`` once per task."""
from __future__ import annotations

import math
import re

from matplotlib import ticker
from matplotlib.figure import Figure as MplFigure

from collab_eval.analysis import plots
from collab_eval.analysis.blocks import Figure, Heading, Para, Table, pct, signed_pct, tau
from collab_eval.analysis.latency import LatencyProfile


def seconds(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def section(task: str, entries: dict) -> list:
    """Blocks (report.py's Heading/Para/Table/Figure) for every link profile of the task."""

    specs = list(dict.fromkeys(spec for e in entries.values() for spec in (e.latency or {})))
    if not specs:
        return []
    blocks: list = []
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", task)
    for number, spec in enumerate(specs):
        profiles = {k: e.latency[spec] for k, e in entries.items() if e.latency and spec in e.latency}
        first = next(iter(profiles.values()))
        timing = ("server seconds from FLOPs at " f"{first.server_flops_per_second:g} FLOP/s"
                  if first.server_flops_per_second else "measured server seconds")
        blocks += [Heading(3, f"Latency under {spec}"),
                   Para(f"Link: {first.description}; {timing}; edge seconds × {first.edge_scale:g}; "
                        f"{first.placement}. A sample's latency is edge_global + (R/2 + 8·bytes_global/U) + stage1 + "
                        "R/2, and when retransmitted also roi + (R/2 + 8·bytes_request/D) + edge_local + "
                        "(R/2 + 8·bytes_local/U) + stage2 (docs/latency.md). Seconds per sample: mean and 95th "
                        "percentile over the task's samples; the gate point is the entropy-gate threshold of least "
                        "mean latency reaching the target accuracy."),
                   Table(["system", "never: mean / p95 s", "always: mean / p95 s", "target acc",
                          "gate reaching the target: τ / retransmitted / acc", "gate: mean / p95 s",
                          "mean latency saved vs always", "oracle: acc / mean s"],
                         [row(k, p, pct, signed_pct, tau) for k, p in profiles.items()]),
                   Figure(f"{slug}_latency_{number}.png", figure(task, spec, profiles),
                          f"{task}: accuracy against latency under {spec}")]
    return blocks


def row(name: str, p: LatencyProfile, pct, signed_pct, tau) -> list[str]:
    gate = p.reach_target
    return [name, f"{seconds(p.never.mean)} / {seconds(p.never.p95)}",
            f"{seconds(p.always.mean)} / {seconds(p.always.p95)}", pct(p.target_accuracy),
            f"τ={tau(gate.tau)} / {pct(gate.rate)}% / {pct(gate.accuracy)}" if gate else "none reaches it",
            f"{seconds(gate.mean)} / {seconds(gate.p95)}" if gate else "–",
            signed_pct(1 - gate.mean / p.always.mean) if gate and p.always.mean else "–",
            f"{pct(p.oracle.accuracy)} / {seconds(p.oracle.mean)}"]


def figure(task: str, spec: str, profiles: dict[str, LatencyProfile]) -> bytes:
    """Accuracy against mean latency (left) and p95 latency (right), every system."""
    fig = MplFigure(figsize=(12, 5.2), layout="constrained")
    axes = fig.subplots(1, 2)
    colour_of = plots.colours(profiles)
    for stat, label, ax in (("mean", "mean latency per sample, s", axes[0]),
                            ("p95", "95th-percentile latency, s", axes[1])):
        ys = []
        for name, p in sorted(profiles.items()):
            colour = colour_of[name]

            def draw(points, *args, ax=ax, stat=stat, ys=ys, **kw):
                ys.extend(q.accuracy for q in points)
                return ax.plot([getattr(q, stat) for q in points], [q.accuracy for q in points], *args, **kw)
            plots.derived_curves(draw, ax, name, colour, stat, gated=p.gated, random=p.random,
                                 oracle=p.oracle_curve, never=p.never, always=p.always)
        ax.set_ylim(*plots.accuracy_limits(ys))
        ax.yaxis.set_major_formatter(ticker.PercentFormatter(xmax=1, decimals=0))
        ax.set_xlabel(label)
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=7, frameon=False)
    fig.suptitle(f"{task}: accuracy against latency under {spec} (markers: never/always ○□)", fontsize=10)
    return plots.png(fig)


def headline(summary) -> str:
    """Per task, system and link profile, for the terminal: never, always and the gate point, mean / p95 seconds."""
    rows = [["task", "system", "link", "never: mean / p95 s", "always: mean / p95 s",
             "gate reaching the target: τ / retransmitted / mean / p95 s"]]
    for system, entry in sorted(summary.systems.items()):
        for task, e in sorted(entry.tasks.items()):
            for spec, p in (e.latency or {}).items():
                gate = p.reach_target
                rows.append([task, system, spec, f"{seconds(p.never.mean)} / {seconds(p.never.p95)}",
                             f"{seconds(p.always.mean)} / {seconds(p.always.p95)}",
                             f"τ={gate.tau:.5g} / {100 * gate.rate:.1f}% / {seconds(gate.mean)} / {seconds(gate.p95)}"
                             if gate else "none reaches it"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])
