"""How `collab-eval report` and `check` scale with the number of samples per task.

    python -m collab_eval.lab.report_timing RUN_DIR [--sizes 1000,2000,4000,9000] [--repeats 3]

RUN_DIR is a real ``policy=always`` run (lmms-eval's --output_path with its records). Its
records are replicated, per task, to each size (sample i is a copy of sample i mod n with
doc_id i and its scores moved by i // n * 1e-9, so every sample keeps a real document,
answers, costs and score while the random baseline hashes distinct keys and the gate has a
threshold per sample, as in a real run) and written as one run in a temporary directory. For each size
it times, in this process, the best of ``--repeats``:

- report: what ``collab-eval report`` does: reading the records, building the summary (20
  random seeds) and writing report.md, report.html, summary.json and the figures;
- check: what ``collab-eval check`` does: reading the records, building the summary (no random
  band) and comparing it with that size's own report summary as the baseline.

Imports and task loading (lmms-eval's TaskManager finding each task's YAML) happen before the
clock starts. Times are CPU seconds of this process (one thread: set OMP_NUM_THREADS=1), so a
busy shared machine changes them less than wall time; wall seconds are printed beside them.
The replicated answers repeat the run's (document, answer) pairs, so answers are rescored once
per distinct pair, as they would be in a run with repeated documents.
"""
from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

if TYPE_CHECKING:
    from collab_eval.records import SampleRecord


def replicate(records: list[SampleRecord], size: int) -> list[SampleRecord]:
    """Each task's records repeated to ``size`` samples with doc_ids 0..size-1."""
    by_task: dict[str, list[SampleRecord]] = {}
    for r in records:
        by_task.setdefault(r.task, []).append(r)
    out = []
    for _task, rows in sorted(by_task.items()):
        rows = sorted(rows, key=lambda r: r.doc_id)
        for i in range(size):
            r, copy = rows[i % len(rows)], i // len(rows)
            # Copies get scores a hair apart, so the gate has a threshold per sample, as in a real run.
            out.append(r.model_copy(update={"doc_id": i, "score": nudge(r.score, copy),
                                            "scores": {k: nudge(v, copy) for k, v in r.scores.items()}}))
    return out


def nudge(score, copy: int):
    return None if score is None else score + copy * 1e-9


def timed(fn):
    cpu, wall = time.process_time(), time.perf_counter()
    value = fn()
    return value, time.process_time() - cpu, time.perf_counter() - wall


def measure(run_dir: Path, out_dir: Path, repeats: int) -> dict[str, tuple[float, float]]:
    """Best (CPU, wall) seconds of what ``collab-eval report`` and ``check`` do after imports."""
    from collab_eval.analysis import check, report
    from collab_eval.analysis.runs import find_runs
    from collab_eval.analysis.scoring import Scorer
    from collab_eval.analysis.summarised import summary_of
    from collab_eval.analysis.summary import Summary

    for task in find_runs(run_dir)[0].tasks:  # task loading, outside the clock (cached per process)
        Scorer().metric(task)
    best: dict[str, tuple[float, float]] = {}
    for _ in range(repeats):
        def report_run():
            with summary_of([run_dir], seeds=20) as summary:
                report.write(summary, out_dir)

        _, cpu, wall = timed(report_run)
        best["report"] = min(best.get("report", (cpu, wall)), (cpu, wall))
        baseline = Summary.read(out_dir / "summary.json")

        def check_run(baseline=baseline):
            with summary_of([run_dir], seeds=0) as summary:
                check.compare(summary, baseline)

        _, cpu, wall = timed(check_run)
        best["check"] = min(best.get("check", (cpu, wall)), (cpu, wall))
    return best


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a real policy=always run (lmms-eval --output_path with its records)")
    parser.add_argument("--sizes", default="1000,2000,4000,9000", help="samples per task (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many timings per size")
    args = parser.parse_args(argv)

    from collab_eval.analysis.runs import find_runs

    runs = [run for run in find_runs(args.run_dir) if run.policy == "always"]
    if not runs:
        raise SystemExit(f"{args.run_dir}: no policy=always run found")
    source = runs[0]
    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    print(f"source: {source.name}, tasks {', '.join(source.tasks)}, {len(source.records)} records; "
          f"CPU seconds (wall), best of {args.repeats}")
    print(f"{'samples/task':>12}  {'report':>15}  {'x/2n':>5}  {'check':>15}  {'x/2n':>5}   "
          "(x/2n: growth per doubling)")
    previous = None
    with tempfile.TemporaryDirectory(prefix="report_timing_") as tmp:
        for size in sizes:
            run_dir = Path(tmp) / f"n{size}"
            path = run_dir / "records" / f"{source.name}.rank0.jsonl"
            path.parent.mkdir(parents=True)
            with open(path, "w", encoding="utf-8") as f:
                for r in replicate(source.records, size):
                    f.write(r.to_json() + "\n")
            t = measure(run_dir, run_dir / "report", args.repeats)
            ratios = ["", ""]
            if previous:  # the growth per doubling of samples: 2.0 is linear, 4.0 quadratic
                doublings = math.log2(size / previous[0])
                ratios = [f"{(t[k][0] / previous[1][k][0]) ** (1 / doublings):.2f}" for k in ("report", "check")]
            print(f"{size:>12}  {t['report'][0]:>6.2f} ({t['report'][1]:>6.2f})  {ratios[0]:>5}  "
                  f"{t['check'][0]:>6.2f} ({t['check'][1]:>6.2f})  {ratios[1]:>5}")
            previous = (size, t)


if __name__ == "__main__":
    main()
