"""The report's figures, as PNG bytes (matplotlib's Agg canvas; no pyplot, no display)."""
from __future__ import annotations

import hashlib
import io

import numpy as np
from matplotlib import ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from collab_eval.analysis.calibrate import Calibration
from collab_eval.analysis.summary import CORRECT, TaskSummary
from collab_eval.analysis.views import TaskView

# tab10: distinct colours; a system's is picked by a hash of its name (see colours()).
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
COSTS = (("bytes", "mean bytes sent per sample", 1.0), ("flops", "mean GFLOPs per sample", 1e-9))  # as the tables
LOG_SPAN = 4.0  # a cost axis whose largest value is this many times its smallest is drawn on a log scale
MIN_SPAN = 0.10  # the accuracy axis spans at least 10 points, so one sample never looks like a cliff
MARKERS_UP_TO = 200  # a curve with more points is drawn as a line only


def png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def colours(names) -> dict[str, str]:
    """Each system's colour, from its name: the same in every report that shows it. Names are
    taken in sorted order; one whose colour an earlier name already holds takes the next free."""
    chosen: dict[str, str] = {}
    for name in sorted(names):
        start = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") % len(PALETTE)
        free = [PALETTE[(start + i) % len(PALETTE)] for i in range(len(PALETTE))
                if PALETTE[(start + i) % len(PALETTE)] not in chosen.values()]
        chosen[name] = free[0] if free else PALETTE[start]
    return chosen


def accuracy_limits(values, min_span: float = MIN_SPAN) -> tuple[float, float]:
    """The accuracy axis: the data's range widened to at least ``min_span`` around its middle,
    kept inside [0, 1], plus a margin."""
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi - lo < min_span:
        middle = (lo + hi) / 2
        lo, hi = middle - min_span / 2, middle + min_span / 2
        lo, hi = (0.0, min_span) if lo < 0 else (1 - min_span, 1.0) if hi > 1 else (lo, hi)
    margin = 0.05 * (hi - lo)
    return max(lo - margin, -0.02), min(hi + margin, 1.02)


def log_scale(values) -> bool:
    """Log when the costs span a wide range (systems of very different size on one axis)."""
    positive = [v for v in values if v > 0]
    return len(positive) == len(values) and bool(positive) and max(positive) >= LOG_SPAN * min(positive)


def xy(points, cost: str, scale: float = 1.0):
    """x (cost) and y (accuracy) of points, or of anything with those attributes."""
    return [getattr(p, cost) * scale for p in points], [p.accuracy for p in points]


def tradeoff(task: str, systems: dict[str, TaskSummary]) -> bytes:
    return png(tradeoff_figure(task, systems))


def tradeoff_figure(task: str, systems: dict[str, TaskSummary]) -> Figure:
    """Accuracy against mean bytes (left) and mean GFLOPs (right) for one task, every system."""
    fig = Figure(figsize=(12, 5.4), layout="constrained")
    axes = fig.subplots(1, 2)
    colour_of = colours(systems)
    for (cost, label, scale), ax in zip(COSTS, axes):
        xs, ys = [], []  # everything drawn, for the axes' ranges

        def draw(points, *args, cost=cost, scale=scale, xs=xs, ys=ys, ax=ax, **kw):
            x, y = xy(points, cost, scale)
            xs.extend(x)
            ys.extend(y)
            return ax.plot(x, y, *args, **kw)

        for name, entry in sorted(systems.items()):
            colour = colour_of[name]
            f = entry.from_always
            if f:
                c = f.curves

                def band(c=c, colour=colour, ax=ax, cost=cost, scale=scale, ys=ys):
                    if c.random_band:
                        ax.fill_between([getattr(b, cost) * scale for b in c.random_band],
                                        [b.lo for b in c.random_band], [b.hi for b in c.random_band], color=colour,
                                        alpha=0.12, lw=0)
                        ys.extend([b.lo for b in c.random_band] + [b.hi for b in c.random_band])
                derived_curves(draw, ax, name, colour, cost, scale, gated=c.gated, random=c.random, oracle=c.oracle,
                               never=f.never, always=f.always, gate_label=f"entropy gate ({f.score_name})",
                               random_label="random (expected)", after_random=band)
            if entry.calibrated:
                calibrated_marks(draw, ax, entry.calibrated, cost, scale, colour)
            for j, run in enumerate(sorted(entry.points, key=lambda run: getattr(run.point, cost))):
                p = run.point
                # A system of points only (a baseline such as the HD model's never runs) has no curve
                # in the legend: its points are named there.
                draw([p], "X", color=colour, ms=8, mec="black", mew=0.5, label=None if f else f"{name}: {run.label}")
                ax.annotate(run.label, (getattr(p, cost) * scale, p.accuracy), textcoords="offset points", fontsize=7,
                            xytext=(5, 5 + 11 * (j % 4)), color=colour,  # staggered: points often share a height
                            arrowprops={"arrowstyle": "-", "color": colour, "lw": 0.5, "alpha": 0.5})
        ax.set_ylim(*accuracy_limits(ys))
        ax.yaxis.set_major_formatter(ticker.PercentFormatter(xmax=1, decimals=0))
        if log_scale(xs):
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
            label += " (log scale)"
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _, cost=cost: f"{v:,.0f}" if cost == "bytes"
                                                          else f"{v:,.4g}"))
        ax.set_xlabel(label)
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=7, frameon=False)
    fig.suptitle(f"{task}: accuracy against cost (markers: never/always ○□, other runs ✕; band: random draws 10–90%)",
                 fontsize=10)
    return fig


def derived_curves(draw, ax, name: str, colour: str, cost: str, scale: float = 1.0, *, gated, random, oracle, never,
                   always, gate_label: str = "entropy gate", random_label: str = "random", after_random=None) -> None:
    """One system's curves derived from its always run, on ``cost`` (an attribute of the points):
    the gate, random retransmission (``after_random``: what to draw right after it, the bytes
    figure's band), the oracle, and the never/always ends, each labelled. ``draw(points, ...)``
    plots points on ``ax``."""
    draw(gated, "-", color=colour, lw=1.8, marker="." if len(gated) <= MARKERS_UP_TO else None, ms=3,
         label=f"{name}: {gate_label}")
    draw(random, "--", color=colour, lw=1, label=f"{name}: {random_label}")
    if after_random is not None:
        after_random()
    # Beyond its last point the oracle keeps its accuracy: an upper bound for larger budgets.
    last = oracle[-1]
    draw(oracle + [last.model_copy(update={cost: max(getattr(always, cost), getattr(last, cost))})],
         ":", color=colour, lw=1.2, label=f"{name}: oracle")
    for end, marker, at in (("never", "o", never), ("always", "s", always)):
        draw([at], marker, color=colour, ms=7, mfc="white")
        ax.annotate(end, (getattr(at, cost) * scale, at.accuracy), textcoords="offset points", xytext=(4, -10),
                    fontsize=7, color=colour)


def score_curves(task: str, systems: dict[str, TaskSummary]) -> bytes:
    """The gate of every recorded score against bytes, one panel per system with an always run
    (six or more scores stay readable: one colour per score, the same in every panel)."""
    with_curves = {name: e.from_always for name, e in sorted(systems.items()) if e.from_always}
    fig = Figure(figsize=(4.8 * max(1, len(with_curves)), 4.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, max(1, len(with_curves)), squeeze=False)[0])
    names = list(dict.fromkeys(n for f in with_curves.values() for n in [f.score_name, *f.curves.gated_other_scores]))
    colour_of = {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}
    for ax, (system, f) in zip(axes, with_curves.items()):
        ys = []
        for score, points in {f.score_name: f.curves.gated, **f.curves.gated_other_scores}.items():
            x, y = xy(points, "bytes")
            ys += y
            ax.plot(x, y, "-", color=colour_of[score], lw=1.4, label=score)
        x, y = xy(f.curves.random, "bytes")
        ax.plot(x, y, "--", color="black", lw=0.8, label="random (expected)")
        ax.set_ylim(*accuracy_limits(ys + y))
        ax.yaxis.set_major_formatter(ticker.PercentFormatter(xmax=1, decimals=0))
        if log_scale(x):
            ax.set_xscale("log")
        ax.set_title(system, fontsize=8)
        ax.set_xlabel("mean bytes sent per sample")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title="gate score", title_fontsize=7)
    fig.suptitle(f"{task}: the gate on each uncertainty score (from the always run), against random", fontsize=10)
    return png(fig)


def calibrated_marks(draw, ax, calibrated: Calibration, cost: str, scale: float, colour: str) -> None:
    """The calibrated τ on the whole run (★, on the curve) and its held-out outcome (☆)."""
    whole, held_out = calibrated.whole_run, calibrated.test
    draw([whole], "*", color=colour, ms=14, mec="black", mew=0.6)
    ax.annotate(f"calibrated τ ({calibrated.target} {calibrated.limit:g})",
                (getattr(whole, cost) * scale, whole.accuracy), textcoords="offset points", xytext=(-8, 8),
                ha="right", fontsize=7, color=colour)
    if held_out:
        draw([held_out], "*", color=colour, ms=14, mfc="white", mec=colour, mew=1.2)
        ax.annotate(f"held-out ({held_out.n} samples)", (getattr(held_out, cost) * scale, held_out.accuracy),
                    textcoords="offset points", xytext=(8, -12), fontsize=7, color=colour)


def histograms(task: str, views: list[TaskView]) -> bytes:
    """The gate's score for right and wrong stage-1 answers, one panel per system."""
    fig = Figure(figsize=(4.6 * max(1, len(views)), 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, max(1, len(views))))
    for ax, view in zip(axes, views):
        score = view.samples.score
        finite = np.isfinite(score)
        right = view.acc1 >= CORRECT
        values = score[finite]
        bins = np.linspace(values.min(), values.max() + 1e-9, 21) if values.size else 10
        ax.hist([score[finite & right], score[finite & ~right]], bins=bins, label=["stage 1 right", "stage 1 wrong"],
                color=["tab:green", "tab:red"], alpha=0.7)
        empty = int((~finite).sum())
        title = f"{view.system}" + (f"\n({empty} empty answers: score +inf, not shown)" if empty else "")
        ax.set_title(title, fontsize=8)
        ax.set_xlabel(f"gate score ({view.records[0].score_name}; min-entropy ones in nats)")
        ax.set_ylabel("samples")
        ax.legend(fontsize=7)
    fig.suptitle(f"{task}: stage-1 uncertainty of right and wrong answers", fontsize=10)
    return png(fig)
