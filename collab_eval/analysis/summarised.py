"""The summary of the runs in some directories, read once for a command (report, check, study)."""
from __future__ import annotations

import contextlib
import gc
import sys


@contextlib.contextmanager
def summary_of(run_dirs, seeds: int, command: str = "report"):
    """The summary of the runs in ``run_dirs``, for the duration of a ``with`` block.

    Records parse into millions of small objects without cycles. Left to the garbage collector,
    its full passes rescan them again and again: at 9,000 samples per task, 60% of the reading
    time and half of the rest, growing faster than the samples. So they are read with the
    collector off and then frozen (left out of its passes) until the block ends."""
    from collab_eval.analysis.runs import find_runs
    from collab_eval.analysis.summary import summarise

    def warn(message):  # what a crash can leave (empty file, cut-off last line) is skipped, and said
        print(f"collab-eval {command}: warning: {message}", file=sys.stderr)

    gc.disable()
    try:
        runs = [run for d in run_dirs for run in find_runs(d, warn=warn)]
        gc.freeze()
    finally:
        gc.enable()
    try:
        yield summarise(runs, seeds=seeds, warn=warn)
    finally:
        gc.unfreeze()
