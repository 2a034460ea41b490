"""The report's figures, as PNG bytes (matplotlib's Agg canvas; no pyplot, no display)."""
from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from collab_eval.analysis.summary import CORRECT, TaskView

COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive")
COSTS = (("bytes", "mean bytes sent per sample"), ("flops", "mean FLOPs per sample"))


def png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def xy(points: list[dict], cost: str):
    return [p[cost] for p in points], [p["accuracy"] for p in points]


def tradeoff(task: str, systems: dict[str, dict]) -> bytes:
    """Accuracy against mean bytes (left) and mean FLOPs (right) for one task, every system."""
    fig = Figure(figsize=(12, 5.4), layout="constrained")
    axes = fig.subplots(1, 2)
    for (cost, label), ax in zip(COSTS, axes):
        for i, (name, entry) in enumerate(sorted(systems.items())):
            colour = COLOURS[i % len(COLOURS)]
            c = entry.get("curves")
            if c:
                ax.plot(*xy(c["gated"], cost), "-", color=colour, lw=1.8, marker=".", ms=3,
                        label=f"{name}: entropy gate ({entry['score_name']})")
                for agg, points in c.get("gated_other_scores", {}).items():
                    ax.plot(*xy(points, cost), "-", color=colour, lw=0.8, alpha=0.35, label=f"{name}: gate ({agg})")
                ax.plot(*xy(c["random"], cost), "--", color=colour, lw=1, label=f"{name}: random (expected)")
                if c.get("random_band"):
                    band = c["random_band"]
                    ax.fill_between([b[cost] for b in band], [b["lo"] for b in band], [b["hi"] for b in band],
                                    color=colour, alpha=0.12, lw=0)
                # Beyond its last point the oracle keeps its accuracy: an upper bound for larger budgets.
                oracle = c["oracle"] + [{**c["oracle"][-1], cost: max(entry["always"][cost], c["oracle"][-1][cost])}]
                ax.plot(*xy(oracle, cost), ":", color=colour, lw=1.2, label=f"{name}: oracle")
                for end, marker in (("never", "o"), ("always", "s")):
                    ax.plot(entry[end][cost], entry[end]["accuracy"], marker, color=colour, ms=7, mfc="white")
                    ax.annotate(end, (entry[end][cost], entry[end]["accuracy"]), textcoords="offset points",
                                xytext=(4, -10), fontsize=7, color=colour)
            if entry.get("calibrated"):
                calibrated_marks(ax, entry["calibrated"], cost, colour)
            for j, p in enumerate(sorted(entry.get("points", []), key=lambda p: p[cost])):
                ax.plot(p[cost], p["accuracy"], "X", color=colour, ms=8, mec="black", mew=0.5)
                ax.annotate(p["label"], (p[cost], p["accuracy"]), textcoords="offset points", fontsize=7,
                            xytext=(5, 5 + 11 * (j % 4)), color=colour,  # staggered: points often share a height
                            arrowprops={"arrowstyle": "-", "color": colour, "lw": 0.5, "alpha": 0.5})
        low, high = ax.get_ylim()
        ax.set_ylim(max(low, -0.02), min(high, 1.02))
        ax.set_xlabel(label)
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        if cost == "flops":
            ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=7, frameon=False)
    fig.suptitle(f"{task}: accuracy against cost (markers: never/always ○□, other runs ✕; band: random draws 10–90%)",
                 fontsize=10)
    return png(fig)


def calibrated_marks(ax, calibrated: dict, cost: str, colour: str) -> None:
    """The calibrated τ on the whole run (★, on the curve) and its held-out outcome (☆)."""
    whole, held_out = calibrated["whole_run"], calibrated.get("test")
    ax.plot(whole[cost], whole["accuracy"], "*", color=colour, ms=14, mec="black", mew=0.6)
    ax.annotate(f"calibrated τ ({calibrated['target']} {calibrated['limit']:g})", (whole[cost], whole["accuracy"]),
                textcoords="offset points", xytext=(-8, 8), ha="right", fontsize=7, color=colour)
    if held_out:
        ax.plot(held_out[cost], held_out["accuracy"], "*", color=colour, ms=14, mfc="white", mec=colour, mew=1.2)
        ax.annotate(f"held-out ({held_out['n']} samples)", (held_out[cost], held_out["accuracy"]),
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
        ax.set_xlabel(f"min-entropy score ({view.records[0].get('score_name', 'max')}), nats")
        ax.set_ylabel("samples")
        ax.legend(fontsize=7)
    fig.suptitle(f"{task}: stage-1 uncertainty of right and wrong answers", fontsize=10)
    return png(fig)
