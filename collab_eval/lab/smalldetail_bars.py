"""The smalldetail checkpoints' bars, read from the records of real lmms-eval runs with
``policy=always`` on smalldetail_read / smalldetail_exist (nothing is run here).

    python -m collab_eval.lab.smalldetail_bars RUN_DIR [RUN_DIR ...] [--markdown]

Per task: never (stage-1) and always (stage-2) accuracy with the task's own scoring, the
AUROC of the stage-1 score (min-entropy, the run's aggregate) for stage-1 errors, the share
of samples whose RoI holds the whole digit box (and the digit's centre), and the accuracy
of the entropy gate vs random retransmission at a 50% rate. The two gains (always - never,
gate - random) come with a 95% paired bootstrap interval over the task's samples: on 150
samples a bar a few points wide is within the noise of the test split itself.

Where the gains come from, per task: the same numbers on the small originals (the digit
survives the downscale, so stage 1 can read it) and on the large ones (only the crop shows
it), with the median stage-1 score and how many of each the gate retransmits.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
from scipy.stats import bootstrap

from collab_eval.analysis import curves
from collab_eval.analysis.calibrate import subset
from collab_eval.analysis.runs import find_runs
from collab_eval.analysis.scoring import Scorer
from collab_eval.analysis.views import system_of, task_view
from collab_eval.lab.smalldetail import is_small_original
from collab_eval.records import SampleRecord


def roi_hits(records: list[SampleRecord]) -> tuple[float, float]:
    """(whole target box inside the RoI, target centre inside the RoI) over samples with a RoI."""
    whole, centre = [], []
    for r in records:
        roi, box = r.roi, r.doc.get("target_box")
        if not roi or not box:
            continue
        whole.append(roi[0] <= box[0] and roi[1] <= box[1] and roi[2] >= box[2] and roi[3] >= box[3])
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        centre.append(roi[0] <= cx <= roi[2] and roi[1] <= cy <= roi[3])
    return (float(np.mean(whole)) if whole else float("nan"), float(np.mean(centre)) if centre else float("nan"))


def sent_by_gate(s: curves.Samples, rate: float) -> np.ndarray:
    """Which samples the entropy gate retransmits at ``rate``: the top share by score (stable order)."""
    sent = np.zeros(s.n, dtype=bool)
    sent[np.argsort(-s.score, kind="stable")[:int(round(rate * s.n))]] = True
    return sent


def gated_at(s: curves.Samples, rate: float) -> curves.Point:
    """The entropy gate's outcome at ``rate``."""
    return curves.point(s, sent_by_gate(s, rate))


def by_original_size(records: list[SampleRecord], s: curves.Samples, rate: float) -> dict[str, dict]:
    """Per kind of original ("small": the digit readable in the global view; "large": the rest):
    samples, never and always accuracy, the median stage-1 score, and how many of them the gate
    retransmits at ``rate``. Samples without an image size (failed ones) are left out."""
    sizes = [r.image_size for r in records]
    sent = sent_by_gate(s, rate)
    out = {}
    for kind, small in (("small", True), ("large", False)):
        mask = np.array([bool(size) and is_small_original(size) == small for size in sizes], dtype=bool)
        if mask.any():
            out[kind] = {"n": int(mask.sum()), "never": float(s.acc1[mask].mean()),
                         "always": float(s.acc2[mask].mean()), "median_score": float(np.median(s.score[mask])),
                         f"gated_at_{rate:g}": int(sent[mask].sum())}
    return out


def gate_gain(s: curves.Samples, rate: float) -> float:
    """The gate's accuracy at ``rate`` minus random retransmission's expected accuracy there."""
    return gated_at(s, rate).accuracy - curves.random_expected(s, rate).accuracy


def gain_intervals(s: curves.Samples, rate: float, level: float = 0.95, resamples: int = 2000,
                   seed: int = 0) -> dict[str, tuple[float, float]]:
    """Paired bootstrap (percentile) intervals, in accuracy points, of always - never and of
    the gate's gain over random at ``rate``: the samples are resampled whole, and the gate
    re-ranks each resample."""
    statistics = {"gap_points": lambda t: 100 * (t.acc2.mean() - t.acc1.mean()),
                  "gate_gain_points": lambda t: 100 * gate_gain(t, rate)}
    out = {}
    for name, statistic in statistics.items():
        ci = bootstrap((np.arange(s.n),), lambda index, statistic=statistic: statistic(subset(s, index.astype(int))),
                       vectorized=False, n_resamples=resamples, confidence_level=level, method="percentile",
                       rng=np.random.default_rng(seed)).confidence_interval
        out[f"{name}_ci"] = (float(ci.low), float(ci.high))
    return out


def bars(run_dirs, rate: float = 0.5) -> dict:
    """{system: {task: bars}} over the always runs found under ``run_dirs``."""
    scorer = Scorer()
    out = {}
    for run in (run for d in run_dirs for run in find_runs(d)):
        if run.policy != "always":
            continue
        for task in run.tasks:
            records = [r for r in run.records if r.task == task]
            view = task_view(run.name, task, records, scorer)
            s = view.samples
            gated = gated_at(s, rate)
            whole, centre = roi_hits(records)
            model, codec = system_of(records)
            out.setdefault(f"{run.adapter} {model}:{codec}", {})[task] = {
                "n": s.n, "errors": sum(bool(r.error) for r in records),
                "never": float(s.acc1.mean()), "always": float(s.acc2.mean()),
                "gap_points": 100 * float(s.acc2.mean() - s.acc1.mean()),
                "auroc_stage1_error": curves.auroc(s.score, s.acc1 < 1.0),
                "roi_contains_target": whole, "roi_contains_target_centre": centre,
                f"gated_at_{rate:g}": gated.accuracy, f"random_at_{rate:g}": curves.random_expected(s, rate).accuracy,
                **gain_intervals(s, rate),
                "by_original_size": by_original_size(records, s, rate),
            }
    return out


def markdown(measured: dict, rate: float = 0.5) -> str:
    """One table per system: the README's bars."""
    out = []
    for system, tasks in sorted(measured.items()):
        out += [f"`{system}`", "", "| task (samples) | never | always | always − never [95% CI] | gated vs random at "
                f"{rate:.0%} [95% CI of the gain] | AUROC, stage-1 errors | RoI holds the digit (its centre) |",
                "|---|---|---|---|---|---|---|"]
        for task, b in sorted(tasks.items()):
            gated, random = 100 * b[f"gated_at_{rate:g}"], 100 * b[f"random_at_{rate:g}"]
            auc = "–" if b["auroc_stage1_error"] is None else f"{b['auroc_stage1_error']:.3f}"
            out.append(f"| `{task}` ({b['n']}) | {100 * b['never']:.1f} | {100 * b['always']:.1f} | "
                       f"**{b['gap_points']:+.1f}** {interval(b['gap_points_ci'])} | {gated:.1f} vs {random:.1f} "
                       f"(**{gated - random:+.1f}**) {interval(b['gate_gain_points_ci'])} | {auc} | "
                       f"{100 * b['roi_contains_target']:.1f}% ({100 * b['roi_contains_target_centre']:.1f}%) |")
        out += ["", "| task: originals (samples) | never | always | median stage-1 score | "
                f"retransmitted by the gate at {rate:.0%} |", "|---|---|---|---|---|"]
        for task, b in sorted(tasks.items()):
            for kind, g in b["by_original_size"].items():
                out.append(f"| `{task}`: {kind} ({g['n']}) | {100 * g['never']:.1f} | {100 * g['always']:.1f} | "
                           f"{g['median_score']:.3f} | {g[f'gated_at_{rate:g}']} |")
        out.append("")
    return "\n".join(out)


def interval(ci: tuple[float, float]) -> str:
    return f"[{ci[0]:+.1f}, {ci[1]:+.1f}]"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--rate", type=float, default=0.5)
    parser.add_argument("--markdown", action="store_true", help="one table per system instead of JSON")
    args = parser.parse_args(argv)
    measured = bars(args.run_dirs, args.rate)
    print(markdown(measured, args.rate) if args.markdown else json.dumps(measured, indent=1))


if __name__ == "__main__":
    main()
