"""What compression and gating each buy, and whether they add up: the report's codec figure and
its tables of savings across models, from a summary (no records needed).

A checkpoint run at several codecs (``smalldetail-llava:png``, ``smalldetail-llava:jpeg:50``)
has one entropy-gate curve per codec, each derived from that codec's always run. Everything is
measured against the *reference*: the checkpoint's always run at its lossless codec (``png``;
without one, the codec whose always run sends the most bytes), and the target is 99% of the
reference's accuracy (the summary's target fraction):

- codec alone: the codec's always run against the reference's (bytes saved, accuracy change);
- gate alone: the cheapest reference-codec gate point reaching the target;
- codec and gate: the cheapest point on any codec's gate curve reaching the same target, and
  what the two savings would give together if they were independent, ``1 - (1 - c)(1 - g)``.

``sections(summary)`` gives the report's blocks; it is empty unless some checkpoint has always
runs at two codecs or more (the cross-model table needs only always runs).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from matplotlib import ticker
from matplotlib.figure import Figure as MplFigure

from collab_eval.analysis import plots
from collab_eval.analysis.blocks import Figure, Heading, Para, Table, gflops, nbytes, pct, signed_pct, tau
from collab_eval.analysis.curves import Point, cheapest_reaching
from collab_eval.analysis.summary import FromAlways, RunPoint, Summary, TaskSummary

LOSSLESS = ("png",)


@dataclass(frozen=True)
class CodecRun:
    """One checkpoint's task at one codec: its always run's results and its other runs' points."""
    checkpoint: str
    codec: str
    task: str
    entry: TaskSummary

    @property
    def curves(self) -> FromAlways:
        return self.entry.from_always


@dataclass(frozen=True)
class Combined:
    """One codec of one checkpoint and task, against the reference codec's always run."""
    checkpoint: str
    task: str
    codec: str
    reference: str
    always: Point
    target_accuracy: float  # of the reference's always run
    codec_saving: float | None  # this codec's always against the reference's always (bytes)
    codec_accuracy_change: float  # points of accuracy, fraction
    gate: Point | None  # cheapest point of this codec's gate curve reaching the target
    gate_saving: float | None  # its bytes against the reference's always
    gate_flops_saving: float | None


def by_checkpoint(summary: Summary) -> dict[tuple[str, str], dict[str, CodecRun]]:
    """(checkpoint, task) -> codec -> its always run (systems named ``SYSTEM@RUN``, second always
    runs of a system, are left out)."""
    out: dict[tuple[str, str], dict[str, CodecRun]] = {}
    for name, system in sorted(summary.systems.items()):
        if "@" in name:
            continue
        for task, entry in system.tasks.items():
            if entry.from_always is not None:
                out.setdefault((system.checkpoint, task), {})[system.codec] = CodecRun(
                    system.checkpoint, system.codec, task, entry)
    return out


@dataclass(frozen=True)
class Baseline:
    """A run of a checkpoint that has no always run of the task at any codec (the HD baseline:
    LLaVA-NeXT with never only): a point drawn in every checkpoint's panel."""
    checkpoint: str
    codec: str
    run: RunPoint


def baselines(summary: Summary, task: str) -> list[Baseline]:
    with_curves = {s.checkpoint for s in summary.systems.values() if (e := s.tasks.get(task)) and e.from_always}
    return [Baseline(s.checkpoint, s.codec, run) for name, s in sorted(summary.systems.items())
            if s.checkpoint not in with_curves and task in s.tasks for run in s.tasks[task].points]


def reference_codec(runs: dict[str, CodecRun]) -> str:
    lossless = [c for c in runs if c.split(":")[0] in LOSSLESS]
    return lossless[0] if lossless else max(runs, key=lambda c: runs[c].curves.always.bytes)


def codec_order(codecs) -> list[str]:
    """png first, then lossy codecs from the highest quality down."""
    def key(codec: str):
        name, _, quality = codec.partition(":")
        return (name not in LOSSLESS, name, -int(quality) if quality.isdigit() else 0)
    return sorted(codecs, key=key)


def saving(cost: float, reference: float) -> float | None:
    return 1 - cost / reference if reference else None


def combined(runs: dict[str, CodecRun], fraction: float) -> list[Combined]:
    """Every codec of one checkpoint and task, against its reference codec."""
    ref = reference_codec(runs)
    base = runs[ref].curves.always
    target = fraction * base.accuracy
    out = []
    for codec in codec_order(runs):
        f = runs[codec].curves
        gate = cheapest_reaching(f.curves.gated, target)
        out.append(Combined(
            checkpoint=runs[codec].checkpoint, task=runs[codec].task, codec=codec, reference=ref, always=f.always,
            target_accuracy=target, codec_saving=saving(f.always.bytes, base.bytes),
            codec_accuracy_change=f.always.accuracy - base.accuracy, gate=gate,
            gate_saving=saving(gate.bytes, base.bytes) if gate else None,
            gate_flops_saving=saving(gate.flops, base.flops) if gate else None))
    return out


def independent(codec_saving: float | None, gate_saving: float | None) -> float | None:
    """The saving of both if the codec's and the gate's were independent (fractions multiply)."""
    if codec_saving is None or gate_saving is None:
        return None
    return 1 - (1 - codec_saving) * (1 - gate_saving)


# ----- the figure ---------------------------------------------------------------------------
def codec_figure(task: str, runs_by_checkpoint: dict[str, dict[str, CodecRun]], fraction: float,
                 others: list[Baseline] = ()) -> bytes:
    return plots.png(codec_figure_of(task, runs_by_checkpoint, fraction, others))


def codec_figure_of(task: str, runs_by_checkpoint: dict[str, dict[str, CodecRun]], fraction: float,
                    others: list[Baseline] = ()) -> MplFigure:
    """One panel per checkpoint: the gate curve of each codec on one axis of mean bytes, its
    never ○ and always □, the other runs' points ✕ (tiles), the points of checkpoints without
    an always run ◆ (the HD baseline) in every panel, and the target line."""
    names = sorted(runs_by_checkpoint)
    fig = MplFigure(figsize=(5.2 * len(names), 4.6), layout="constrained")
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    colour_of = plots.colours({codec for runs in runs_by_checkpoint.values() for codec in runs}
                              | {b.codec for b in others})
    for ax, checkpoint in zip(axes, names):
        runs = runs_by_checkpoint[checkpoint]
        xs, ys = [], []
        for codec in codec_order(runs):
            f, colour = runs[codec].curves, colour_of[codec]
            x, y = plots.xy(f.curves.gated, "bytes")
            ax.plot(x, y, "-", color=colour, lw=1.6, label=f"{codec}: entropy gate")
            for end, marker in ((f.never, "o"), (f.always, "s")):
                ax.plot([end.bytes], [end.accuracy], marker, color=colour, ms=6, mfc="white")
            for run in runs[codec].entry.points:
                ax.plot([run.point.bytes], [run.point.accuracy], "X", color=colour, ms=7, mec="black", mew=0.5)
                ax.annotate(run.policy, (run.point.bytes, run.point.accuracy), textcoords="offset points",
                            xytext=(4, 4), fontsize=6, color=colour)
                x, y = x + [run.point.bytes], y + [run.point.accuracy]
            xs += x
            ys += y
        for b in others:
            ax.plot([b.run.point.bytes], [b.run.point.accuracy], "D", color=colour_of[b.codec], ms=6, mec="black",
                    mew=0.5, label=f"{b.codec}: {b.run.label} ({b.checkpoint})")
            ax.annotate(b.run.label, (b.run.point.bytes, b.run.point.accuracy), textcoords="offset points",
                        xytext=(4, -10), fontsize=6, color=colour_of[b.codec])
            xs, ys = xs + [b.run.point.bytes], ys + [b.run.point.accuracy]
        ref = runs[reference_codec(runs)].curves.always
        ax.axhline(fraction * ref.accuracy, color="grey", lw=0.8, ls="--",
                   label=f"{100 * fraction:g}% of always ({reference_codec(runs)})")
        ax.set_ylim(*plots.accuracy_limits(ys + [fraction * ref.accuracy]))
        ax.yaxis.set_major_formatter(ticker.PercentFormatter(xmax=1, decimals=0))
        label = "mean bytes sent per sample"
        if plots.log_scale(xs):
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
            label += " (log scale)"
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.set_xlabel(label)
        ax.set_ylabel("accuracy")
        ax.set_title(checkpoint, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{task}: the entropy gate at each codec (○ never, □ always, ✕ other runs"
                 + (", ◆ checkpoints without an always run" if others else "") + ")", fontsize=10)
    return fig


# ----- the report's blocks ------------------------------------------------------------------
def sections(summary: Summary) -> list:
    grouped = by_checkpoint(summary)
    if not any(len(runs) > 1 for runs in grouped.values()):
        return []
    fraction = summary.settings.target_fraction
    target = f"{100 * fraction:g}% of always"
    blocks: list = [Heading(2, "Codecs and the gate"), Para(
        "What compression and gating each buy, and whether they add up. For each checkpoint the reference is its "
        "always run at its lossless codec (png; else the codec sending the most bytes); the target is "
        f"{target} at the reference codec. Codec alone: each codec's always run against the reference's. "
        "Gate: the cheapest entropy-gate point of that codec's curve (derived from its always run) reaching the "
        "same target, with its savings against the reference's always run. If independent: the saving the codec "
        "alone and the gate alone (at the reference codec) would give together, 1 - (1 - codec)(1 - gate); "
        "a measured saving below it means the two overlap, above it that they compound.")]
    rows, cross = [], []
    for task in sorted({t for _, t in grouped}):
        per_checkpoint = {cp: runs for (cp, t), runs in grouped.items() if t == task}
        blocks.append(Figure(f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', task)}_codecs.png",
                             codec_figure(task, per_checkpoint, fraction, baselines(summary, task)),
                             f"{task}: the entropy gate at each codec, accuracy against bytes"))
        for checkpoint, runs in sorted(per_checkpoint.items()):
            results = combined(runs, fraction)
            gate_alone = results[[r.codec for r in results].index(results[0].reference)]
            for r in results:
                rows.append([task, checkpoint, r.codec, f"{pct(r.always.accuracy)} / {nbytes(r.always.bytes)}",
                             signed_pct(r.codec_saving), f"{100 * r.codec_accuracy_change:+.1f}",
                             (f"τ={tau(r.gate.tau)} / {pct(r.gate.rate)}% / {pct(r.gate.accuracy)} / "
                              f"{nbytes(r.gate.bytes)}") if r.gate else "none reaches it",
                             signed_pct(r.gate_saving), signed_pct(r.gate_flops_saving),
                             signed_pct(independent(r.codec_saving, gate_alone.gate_saving)
                                        if r.codec != r.reference else gate_alone.gate_saving)])
            best = min((r for r in results if r.gate), key=lambda r: (r.gate.bytes, r.gate.flops), default=None)
            cross.append([task, checkpoint, f"{pct(gate_alone.always.accuracy)} / {nbytes(gate_alone.always.bytes)}",
                          f"{signed_pct(gate_alone.gate_saving)} / {signed_pct(gate_alone.gate_flops_saving)}"
                          if gate_alone.gate else "none reaches it",
                          (f"{best.codec}: {signed_pct(best.gate_saving)} / {signed_pct(best.gate_flops_saving)}"
                           if best else "none reaches it"),
                          gflops(gate_alone.always.flops)])
    blocks += [Heading(3, f"Savings at the {target} point, across models"), Table(
        ["task", "checkpoint", "always (reference codec): acc / bytes", "gate alone: bytes / FLOPs saved",
         "best codec with the gate: codec: bytes / FLOPs saved", "always: GFLOPs"], cross),
        Para("Savings are relative to the reference codec's always run (+60% means 60% fewer); every point "
             f"reaches {target} at the reference codec. FLOPs barely depend on the codec: it changes what the "
             "model sees, not how much it computes."),
        Heading(3, "Each codec against the reference"), Table(
        ["task", "checkpoint", "codec", "always: acc / bytes", "codec alone: bytes saved",
         "codec alone: accuracy change (points)", "gate reaching the target: τ / retransmitted / acc / bytes",
         "gate: bytes saved", "gate: FLOPs saved", "if independent: bytes saved"], rows)]
    return blocks
