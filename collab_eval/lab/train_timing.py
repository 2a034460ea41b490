"""What a training step of each smalldetail family costs, as a ratio to LLaVA's, measured in
one process with the families interleaved over rounds (this host's speed drifts by half within
an hour, so minutes measured at different times do not compare; ratios measured together do).

    python -m collab_eval.lab.train_timing [--steps 41] [--rounds 2] [--threads 2]

Each round trains every family for ``--steps`` steps on 60 scenes (the training script itself,
validation on 10); a step's time is measured from the end of the first step to the end of the
last. Per family it prints the best round's seconds per step, that over LLaVA's, and the
family's default number of steps in LLaVA steps: at LLaVA's 2500 steps in about 20 minutes,
that last column is what the family's full run costs beside it.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass

from collab_eval.lab.smalldetail_families import recipes
from collab_eval.lab.train_smalldetail import train

REFERENCE = "llava"


@dataclass(frozen=True)
class StepCost:
    family: str
    seconds: float  # per step, best round
    ratio: float  # to the reference family's
    default_steps: int
    reference_steps: float  # default_steps in the reference family's steps


def step_seconds(family: str, steps: int, threads: int) -> float:
    """Seconds per step of a short real training run, from the end of its first step to the
    end of its last."""
    if steps < 2:
        raise ValueError(f"steps must be at least 2 (the first one is not timed), got {steps}")
    done = []
    with tempfile.TemporaryDirectory() as out:
        train(family, out, steps=steps, n_train=60, n_val=10, threads=threads, log=lambda line: None,
              on_step=lambda step: done.append(time.perf_counter()))
    return (done[-1] - done[0]) / (steps - 1)


def step_costs(seconds: dict[str, list[float]], default_steps: dict[str, int]) -> list[StepCost]:
    """Best round per family, against the reference family's best round."""
    best = {family: min(rounds) for family, rounds in seconds.items()}
    if REFERENCE not in best:
        raise ValueError(f"the reference family {REFERENCE!r} was not measured: got {sorted(best)}")
    out = []
    for family, s in best.items():
        ratio = s / best[REFERENCE]
        out.append(StepCost(family, s, ratio, default_steps[family], default_steps[family] * ratio))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=41, help="steps per family and round (at least 2)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.steps < 2 or args.rounds < 1:
        parser.error(f"--steps must be at least 2 and --rounds at least 1, got {args.steps} and {args.rounds}")
    families = recipes()
    seconds = {family: [] for family in families}
    for r in range(args.rounds):
        for family in families:
            seconds[family].append(step_seconds(family, args.steps, args.threads))
            print(f"round {r}: {family} {seconds[family][-1]:.3f} s/step", flush=True)
    for c in step_costs(seconds, {f: families[f].steps for f in families}):
        print(f"{c.family:<13} {c.seconds:.3f} s/step  {c.ratio:.2f} x {REFERENCE}'s  "
              f"default {c.default_steps} steps = {c.reference_steps:.0f} {REFERENCE} steps")


if __name__ == "__main__":
    main()
