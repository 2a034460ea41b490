"""The ``collab-eval`` command line."""
from __future__ import annotations

import argparse
import contextlib
import gc
import sys
from pathlib import Path

from collab_eval.analysis.check import FRACTIONS, Tolerances
from collab_eval.shipped import TASK_DATA_DIR, TASKS_DIR



def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="collab-eval", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("tasks-dir", help="print the directory to pass to lmms-eval's --include_path")
    task_data = sub.add_parser("build-task-data", help="regenerate the local TextVQA/POPE-schema task data in tasks/data")
    task_data.add_argument("--out", default=str(TASK_DATA_DIR))
    build = sub.add_parser("build-tiny", help="build (or find) a tiny checkpoint and print its path")
    build.add_argument("name", choices=["tiny-llava", "tiny-qwen2-vl", "tiny-instructblip"])
    report = sub.add_parser("report", help="compare runs: accuracy against bytes and FLOPs, as report.md/.html and summary.json")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="lmms-eval --output_path directories (or directories of collab records)")
    report.add_argument("--out", required=True, help="directory for report.md, report.html, summary.json, figures")
    report.add_argument("--seeds", type=int, default=20, help="seeded random draws per rate for the band (0: none)")
    check = sub.add_parser("check", help="fail (exit 1) when accuracy against bytes/FLOPs regressed from a baseline")
    check.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories, or one summary.json")
    check.add_argument("--baseline", required=True, help="a summary.json written by collab-eval report")
    check.add_argument("--tol-auc", type=float, default=Tolerances.auc,
                       help="allowed drop of the mean accuracy over the baseline's cost range (fraction; default %(default)s)")
    check.add_argument("--tol-acc", type=float, default=Tolerances.budget,
                       help="allowed drop of the accuracy within each budget (fraction; default %(default)s)")
    check.add_argument("--tol-cost", type=float, default=Tolerances.cost,
                       help="allowed relative rise of the never/always mean bytes and FLOPs (default %(default)s)")
    check.add_argument("--budgets", default=",".join(f"{f:g}" for f in FRACTIONS),
                       help="budgets as fractions of the baseline's never..always cost range (default %(default)s)")
    check.add_argument("--byte-budgets", default="", help="extra absolute budgets in mean bytes per sample, comma-separated")
    check.add_argument("--summary-out", help="also write the run's summary.json here")
    args = parser.parse_args(argv)

    if args.command == "tasks-dir":
        print(TASKS_DIR)
    elif args.command == "build-task-data":
        from collab_eval.lab.task_data import write_all
        for path in write_all(args.out):
            print(path)
    elif args.command == "build-tiny":
        from collab_eval.checkpoints import resolve
        print(resolve(args.name))
    elif args.command in ("report", "check"):
        try:
            return run_report(args) if args.command == "report" else run_check(args)
        except (FileNotFoundError, ValueError) as err:  # no runs, no records, unknown task: say so plainly
            print(f"collab-eval {args.command}: error: {err}", file=sys.stderr)
            return 2
    return 0


@contextlib.contextmanager
def summary_of(run_dirs, seeds: int):
    """The summary of the runs in ``run_dirs``, for the duration of a ``with`` block.

    Records parse into millions of small objects without cycles. Left to the garbage collector,
    its full passes rescan them again and again: at 9,000 samples per task, 60% of the reading
    time and half of the rest, growing faster than the samples. So they are read with the
    collector off and then frozen (left out of its passes) until the block ends."""
    from collab_eval.analysis.runs import find_runs
    from collab_eval.analysis.summary import summarise

    gc.disable()
    try:
        runs = [run for d in run_dirs for run in find_runs(d)]
        gc.freeze()
    finally:
        gc.enable()
    try:
        yield summarise(runs, seeds=seeds)
    finally:
        gc.unfreeze()


def run_report(args) -> int:
    from collab_eval.analysis import report
    with summary_of(args.run_dirs, args.seeds) as summary:
        paths = report.write(summary, args.out)
        for path in paths.values():
            print(path)
        print("\n" + report.headline(summary.data))
    return 0


def run_check(args) -> int:
    import json
    from collab_eval.analysis import check
    baseline = json.loads(Path(args.baseline).read_text())
    tol = check.Tolerances(auc=args.tol_auc, budget=args.tol_acc, cost=args.tol_cost)
    with contextlib.ExitStack() as stack:
        if len(args.run_dirs) == 1 and Path(args.run_dirs[0]).is_file():
            current = json.loads(Path(args.run_dirs[0]).read_text())
        else:
            current = stack.enter_context(summary_of(args.run_dirs, seeds=0)).data
            if args.summary_out:
                Path(args.summary_out).write_text(json.dumps(current, indent=1) + "\n")
        rows = check.compare(current, baseline, tol, fractions=floats(args.budgets), byte_budgets=floats(args.byte_budgets))
    if not rows:
        print(f"nothing to compare: {args.baseline} has no curves (it needs an always run)")
        return 2
    print(check.LEGEND + "\n")
    print(check.table(rows))
    bad = sum(r.status == "REGRESSION" for r in rows)
    print(f"\n{bad} regression(s) in {len(rows)} comparisons against {args.baseline}" if bad
          else f"\nno regression in {len(rows)} comparisons against {args.baseline}")
    return 1 if bad else 0


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


if __name__ == "__main__":
    raise SystemExit(main())
