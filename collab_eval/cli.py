"""The ``collab-eval`` command line."""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from pathlib import Path

from collab_eval.analysis.check import FRACTIONS, Tolerances
from collab_eval.analysis.summarised import summary_of
from collab_eval.shipped import TASK_DATA_DIR, TASKS_DIR


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="collab-eval", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("tasks-dir", help="print the directory to pass to lmms-eval's --include_path")
    costed = sub.add_parser("costed-tasks",
                            help="write costed variants (collab_<task>) of lmms-eval tasks or groups, "
                            "for --include_path: the task's own metrics plus bytes_total, flops_total, retransmitted")
    costed.add_argument("--tasks", required=True, help="lmms-eval task, group or tag names, comma-separated")
    costed.add_argument("--out", required=True,
                        help="directory to write the YAMLs into (then pass it to --include_path)")
    costed.add_argument("--include_path", help="a directory of further task YAMLs to look the names up in")
    costed.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="set a prompt setting in the task's lmms_eval_specific_kwargs.default (VALUE read as "
                             "YAML: true, 3, text); repeatable; the variant is named after it (ocr=true: "
                             "collab_textvqa_val_ocr)")
    task_data = sub.add_parser("build-task-data",
                               help="regenerate the local TextVQA/POPE-schema task data in tasks/data")
    task_data.add_argument("--out", default=str(TASK_DATA_DIR))
    build = sub.add_parser("build-tiny", help="build (or find) a tiny checkpoint and print its path")
    build.add_argument("name", help="tiny-<family> for every registered family with a tiny builder "
                                    "(collab-eval families --tiny lists them), or geometry-llava")
    families = sub.add_parser("families", help="list the registered model families (collab_eval.families): "
                              "name, lmms-eval model, lmms-eval's own adapter, tiny and trained checkpoints")
    families.add_argument("--trained", action="store_true",
                          help="print MODEL=CHECKPOINT for every family with a shipped trained checkpoint "
                               "(CI's loop over trained families)")
    families.add_argument("--tiny", action="store_true", help="print MODEL=CHECKPOINT for every tiny checkpoint")
    report = sub.add_parser("report",
                            help="compare runs: accuracy against bytes and FLOPs, as report.md/.html and summary.json")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="lmms-eval --output_path directories (or directories of collab records)")
    report.add_argument("--out", required=True, help="directory for report.md, report.html, summary.json, figures")
    report.add_argument("--seeds", type=int, default=20, help="seeded random draws per rate for the band (0: none)")
    report.add_argument("--calibrate", metavar="TARGET",
                        help="add the calibrated threshold and its held-out outcome, e.g. max-loss=0.02 "
                             "(also max-bytes=B, max-flops=F; optional ,delta=0.1,calib-fraction=0.5,seed=0)")
    report.add_argument("--browser-images", type=int, default=12, metavar="N",
                        help="report.html's sample browser: pictures for the first N samples of each category of "
                             "each run and task, re-made from the task's documents (0: none)")
    add_link_options(report, several=True)
    study = sub.add_parser("study", help="run every cell of a study file (model x task set x policy x codec) "
                           "through lmms-eval, skipping complete cells and resuming interrupted ones, then the report")
    study.add_argument("study_file", metavar="FILE",
                       help="a study YAML, or a shipped study's name (paper, smalldetail)")
    study.add_argument("--out", required=True, help="the study's folder: cells/, tasks/ (generated variants), report/")
    study.add_argument("--dry-run", action="store_true", help="print the commands it would run, run nothing")
    study.add_argument("--launcher", choices=["lmms-eval", "accelerate"], default="lmms-eval",
                       help="start each cell with lmms-eval, or with accelerate launch (data parallel)")
    study.add_argument("--num-processes", type=int, default=1, help="processes for --launcher accelerate")
    study.add_argument("--limit", type=int, help="lmms-eval's --limit for every cell (documents per task)")
    study.add_argument("--seeds", type=int, default=20, help="the report's random draws per rate (as report)")
    study.add_argument("--status", action="store_true",
                       help="print each cell's state (complete, running, queued, failed, interrupted, not started) "
                            "and run nothing; exit 0 when every cell is complete, 1 otherwise")
    study.add_argument("--cell", action="append", default=[], metavar="NAME",
                       help="only this cell (MODEL/TASK_SET/CODEC/POLICY, as --status names it); repeatable")
    study.add_argument("--report", action="store_true", dest="report_only",
                       help="write the report now from the complete cells, run nothing")
    study.add_argument("--executor", choices=["sequential", "local", "slurm"], default="sequential",
                       help="sequential: one cell after another here; local: --jobs cells at once here (each on its "
                            "own GPUs where there are GPUs); slurm: one Slurm job per cell (one job array, submitit)")
    study.add_argument("--jobs", type=int, default=None,
                       help="local: cells at once (default 2); slurm: cells running at once (the array's %%N)")
    study.add_argument("--gpus-per-cell", type=int, default=None,
                       help="GPUs per cell (local: pinned with CUDA_VISIBLE_DEVICES, default 1; "
                            "slurm: --gpus-per-node, default the file's); above 1 the cell runs under accelerate, "
                            "one process per GPU")
    study.add_argument("--partition", help="slurm: the partition (default the file's slurm.partition)")
    study.add_argument("--account", help="slurm: the account to charge")
    study.add_argument("--cpus-per-cell", type=int, help="slurm: CPUs per cell")
    study.add_argument("--mem-gb", type=float, help="slurm: memory per cell in GB")
    study.add_argument("--time-min", type=int, help="slurm: the time limit of each cell's job in minutes "
                                                     "(default the file's, else 1440)")
    study.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE",
                       help="slurm: a further sbatch option (qos=high, constraint=a100), or a flag (exclusive); "
                            "repeatable")
    study.add_argument("--no-wait", action="store_true",
                       help="slurm: return once submitted (the last cell to complete writes the report)")
    check = sub.add_parser("check", help="fail (exit 1) when accuracy against bytes/FLOPs regressed from a baseline; "
                                         "exit 2 when the run cannot be compared with it or an input is malformed")
    check.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories, or one summary.json")
    check.add_argument("--baseline", required=True, help="a summary.json written by collab-eval report")
    check.add_argument("--tol-auc", type=float, default=Tolerances.auc,
                       help="allowed drop of the mean accuracy over the baseline's cost range "
                       "(fraction; default %(default)s)")
    check.add_argument("--tol-acc", type=float, default=Tolerances.budget,
                       help="allowed drop of the accuracy within each budget (fraction; default %(default)s)")
    check.add_argument("--tol-cost", type=float, default=Tolerances.cost,
                       help="allowed relative rise of the never/always mean bytes and FLOPs (default %(default)s)")
    check.add_argument("--budgets", default=",".join(f"{f:g}" for f in FRACTIONS), type=floats,
                       help="budgets as fractions of the baseline's never..always cost range (default %(default)s)")
    check.add_argument("--byte-budgets", default="", type=floats,
                       help="extra absolute budgets in mean bytes per sample, comma-separated")
    check.add_argument("--system", action="append", default=[], type=system_pair, metavar="RUN_SYSTEM=BASELINE_SYSTEM",
                       help="compare the run's system RUN_SYSTEM with the baseline's BASELINE_SYSTEM (e.g. after a "
                            "codec or checkpoint change); repeatable")
    check.add_argument("--allow-subset", action="store_true",
                       help="compare a run with fewer samples per task, or fewer systems/tasks, than the baseline "
                            "on what it has (otherwise: not comparable, exit 2)")
    check.add_argument("--summary-out", help="also write the run's summary.json here")
    calibrate = sub.add_parser("calibrate", help="choose the threshold τ for a loss or cost target, with a "
                               "finite-sample guarantee, from an always run (held-out check built in)")
    calibrate.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="directories holding policy=always runs")
    calibrate.add_argument("--task", required=True, help="the lmms-eval task to calibrate on")
    goal = calibrate.add_mutually_exclusive_group(required=True)
    goal.add_argument("--max-loss", type=float, metavar="ε",
                      help="accuracy lost against always at most ε (a fraction: 0.02 = 2 points); "
                      "fewest retransmissions")
    goal.add_argument("--max-bytes", type=float, metavar="B", help="mean bytes per sample at most B; most accurate τ")
    goal.add_argument("--max-flops", type=float, metavar="F", help="mean FLOPs per sample at most F; most accurate τ")
    goal.add_argument("--max-latency", type=float, metavar="SECONDS",
                      help="mean (or --latency-stat p95) latency per sample under --link at most SECONDS; "
                           "most accurate τ (docs/latency.md)")
    add_link_options(calibrate, several=False)
    calibrate.add_argument("--delta", type=float, default=0.1,
                           help="the guarantee holds with probability at least 1 - delta (default %(default)s)")
    held_out = calibrate.add_mutually_exclusive_group()
    held_out.add_argument("--calib-fraction", type=float,
                          help="calibrate on this fraction of the images, report the rest as the test part")
    held_out.add_argument("--test", metavar="RUN_DIR", help="an always run of new samples to report the choice on")
    calibrate.add_argument("--seed", type=int, default=0, help="seed of the split and of the randomised test")
    calibrate.add_argument("--score", help="the score to gate on: any score the records hold (docs/scores.md; "
                                           "default: the run's)")
    calibrate.add_argument("--deterministic", action="store_true",
                           help="the conservative non-randomised test (needs more calibration images)")
    calibrate.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(glued_link_values(sys.argv[1:] if argv is None else list(argv)))

    if args.command == "tasks-dir":
        print(TASKS_DIR)
    elif args.command == "costed-tasks":
        from collab_eval.costed_tasks import parse_overrides, write_costed_tasks
        try:
            names = write_costed_tasks([t for t in args.tasks.split(",") if t.strip()], args.out, args.include_path,
                                       overrides=parse_overrides(args.overrides))
        except ValueError as err:
            print(f"collab-eval costed-tasks: error: {err}", file=sys.stderr)
            return 2
        print(f"--tasks {','.join(names)} --include_path {Path(args.out).resolve()}")
    elif args.command == "build-task-data":
        from collab_eval.lab.task_data import write_all
        for path in write_all(args.out):
            print(path)
    elif args.command == "build-tiny":
        from collab_eval.checkpoints import builders, resolve
        if args.name not in builders():
            print(f"collab-eval build-tiny: error: unknown tiny checkpoint {args.name!r}; "
                  f"one of {', '.join(builders())}", file=sys.stderr)
            return 2
        print(resolve(args.name))
    elif args.command == "families":
        return list_families(args)
    elif args.command == "study":
        return run_study(args)
    elif args.command in ("report", "check", "calibrate"):
        # Malformed or missing inputs (each message names the file) exit 2, never with a traceback:
        # exit 1 means a regression and nothing else.
        try:
            return {"report": run_report, "check": run_check, "calibrate": run_calibrate}[args.command](args)
        except (OSError, ValueError) as err:
            print(f"collab-eval {args.command}: error: {err}", file=sys.stderr)
            return 2
        except Exception as err:  # a bug, or an input no check foresaw: still one line and exit 2
            print(f"collab-eval {args.command}: error: unexpected {type(err).__name__}: {err}", file=sys.stderr)
            return 2
    return 0


def list_families(args) -> int:
    from collab_eval import families
    installed = families.installed()
    for name, why in installed.broken.items():
        print(f"collab-eval families: warning: family {name} cannot be loaded: {why}", file=sys.stderr)
    if args.trained or args.tiny:
        for family in installed.families.values():
            checkpoint = family.trained if args.trained else family.tiny_name
            if checkpoint:
                print(f"{family.model_id}={checkpoint}")
        return 0
    print("\t".join(["family", "model", "lmms-eval adapter", "tiny", "trained", "reference checkpoints"]))
    for f in installed.families.values():
        print("\t".join([f.name, f.model_id, f.lmms_eval_model, f.tiny_name or "-", f.trained or "-",
                         " ".join(f.reference_checkpoints)]))
    return 0


def run_report(args) -> int:
    from collab_eval.analysis import report
    check_timing_options(args)
    with summary_of(args.run_dirs, args.seeds, "report") as summary:
        if args.calibrate:
            from collab_eval.analysis.calibrate import annotate
            annotate(summary, args.calibrate)
        if args.link:
            from collab_eval.analysis import latency
            latency.annotate(summary, args.link, latency_costs(args))
        paths = report.write(summary, args.out, browser_images=args.browser_images)
        for path in paths.values():
            print(path)
        print("\n" + report.headline(summary))
        from collab_eval.analysis import gaps
        from collab_eval.analysis.summary import system_labels
        for note in gaps.notes(summary, system_labels(summary)):  # what is missing, what failed
            print(note)
        if args.link:
            from collab_eval.analysis import latency_report
            print("\n" + latency_report.headline(summary))
    return 0


def run_study(args) -> int:
    from collab_eval import study, study_exec
    from collab_eval.study_claims import StudyBusy
    try:
        for name in ("num_processes", "limit", "jobs", "gpus_per_cell", "cpus_per_cell", "time_min"):
            value = getattr(args, name)
            if value is not None and value < (0 if name == "gpus_per_cell" else 1):
                raise study.StudyError(f"--{name.replace('_', '-')} must be at least "
                                       f"{0 if name == 'gpus_per_cell' else 1}, got {value}")
        spec = study.load_study(args.study_file)
        out = Path(args.out)
        if args.status:
            lines, done = study_exec.status_lines(spec, out, args.cell)
            print("\n".join(lines))
            return 0 if done else 1
        if args.report_only:
            grid = study.cells(spec, out.resolve())
            complete = [c.folder for c in grid if study.cell_state(c) == "complete"]
            study_exec.write_report(complete, out.resolve() / "report", args.seeds, print)
            return 0 if complete else 1
        executor = study_executor(args, spec)
        launcher = study.Launcher(args.launcher, args.num_processes)
        gpus = executor.slurm.gpus_per_cell if executor.kind == "slurm" else \
            executor.gpus_per_cell if executor.kind == "local" and study_exec.visible_gpus() else 0
        if gpus > 1 and args.launcher == "lmms-eval":
            launcher = study.Launcher("accelerate", gpus)  # one process per GPU of the cell
        if args.dry_run:
            study.check_names(spec)
            p = study.plan(spec, out, launcher, args.limit)
            if args.cell:
                chosen = {c.folder for c in study.select([row[0] for row in p.cells], args.cell)}
                p.cells = [row for row in p.cells if row[0].folder in chosen]
            study.print_plan(p)
            return 0
        return study.run_study(spec, out, launcher, args.limit, seeds=args.seeds, executor=executor,
                               names=args.cell or None, command_line=" ".join(["collab-eval", *sys.argv[1:]]))
    except KeyboardInterrupt:
        print("collab-eval study: interrupted; the same command continues it (complete cells are skipped, the "
              "interrupted one resumed)", file=sys.stderr)
        return 130
    except (ValueError, StudyBusy) as err:  # StudyError, and what report or costed-tasks refuse
        print(f"collab-eval study: error: {err}", file=sys.stderr)
        return 2


def study_executor(args, spec):
    """The executor and its Slurm resources: the command line over the study file's ``slurm:``."""
    from collab_eval import study, study_exec
    if args.executor != "slurm" and (args.partition or args.account or args.cpus_per_cell or args.mem_gb
                                     or args.time_min or args.sbatch or args.no_wait):
        raise study.StudyError("--partition, --account, --cpus-per-cell, --mem-gb, --time-min, --sbatch and "
                               "--no-wait are for --executor slurm")
    if args.executor == "sequential" and (args.jobs or args.gpus_per_cell is not None):
        raise study.StudyError("--jobs and --gpus-per-cell are for --executor local or slurm")
    sbatch = dict(spec.slurm.sbatch)
    for item in args.sbatch:
        key, sep, value = item.partition("=")
        if not key.strip().lstrip("-"):
            raise study.StudyError(f"--sbatch {item!r}: expected KEY=VALUE (e.g. qos=high) or a flag's KEY (exclusive)")
        sbatch[key.strip().lstrip("-")] = value if sep else True
    given = {"partition": args.partition, "account": args.account, "cpus_per_cell": args.cpus_per_cell,
             "mem_gb": args.mem_gb, "time_min": args.time_min, "gpus_per_cell": args.gpus_per_cell}
    slurm = study.SlurmSpec.model_validate(spec.slurm.model_dump() | {k: v for k, v in given.items() if v is not None}
                                           | {"sbatch": sbatch})
    jobs = args.jobs or (2 if args.executor == "local" else 1)
    return study_exec.Executor(args.executor, jobs, args.gpus_per_cell or 1, slurm, wait=not args.no_wait,
                               poll_s=float(os.environ.get("COLLAB_EVAL_STUDY_POLL_S", "5")))


def run_check(args) -> int:
    from collab_eval.analysis import check
    from collab_eval.analysis.summary import Summary
    baseline = Summary.read(args.baseline)
    tol = check.Tolerances(auc=args.tol_auc, budget=args.tol_acc, cost=args.tol_cost)
    with contextlib.ExitStack() as stack:
        if len(args.run_dirs) == 1 and Path(args.run_dirs[0]).is_file():
            current = Summary.read(args.run_dirs[0])
        else:
            current = stack.enter_context(summary_of(args.run_dirs, seeds=0, command="check"))
            if args.summary_out:
                current.write(args.summary_out)
        result = check.compare(current, baseline, tol, fractions=args.budgets, byte_budgets=args.byte_budgets,
                               systems=dict(args.system), allow_subset=args.allow_subset)
    if result.not_comparable:
        print(f"not comparable with {args.baseline} (nothing was compared):")
        print("\n".join(f"- {reason}" for reason in result.not_comparable))
        if result.notes:
            print("\n".join(f"- {note}" for note in result.notes))
        if any("samples in the run" in reason for reason in result.not_comparable):
            print("A run on fewer samples can be compared on what it has with --allow-subset.")
        return 2
    if not result.rows:
        print(f"nothing to compare: {args.baseline} has no curves (it needs an always run)"
              if not result.notes else "nothing to compare:\n" + "\n".join(f"- {n}" for n in result.notes))
        return 2
    print(check.LEGEND + "\n")
    if result.notes:
        print("Not compared, or compared on fewer samples:\n"
              + "\n".join(f"- {n}" for n in result.notes) + "\n")
    print(check.regression_table(result.rows))
    bad = result.regressions
    print(f"\n{bad} regression(s) in {len(result.rows)} comparisons against {args.baseline}" if bad
          else f"\nno regression in {len(result.rows)} comparisons against {args.baseline}")
    return 1 if bad else 0


def run_calibrate(args) -> int:
    import json

    from collab_eval.analysis import calibrate
    from collab_eval.analysis.runs import find_runs
    from collab_eval.analysis.scoring import Scorer
    from collab_eval.analysis.summary import include_paths
    kind, limit = next((k, v) for k, v in (("loss", args.max_loss), ("bytes", args.max_bytes),
                                           ("flops", args.max_flops), ("latency", args.max_latency)) if v is not None)
    if kind == "latency" and not (math.isfinite(limit) and limit > 0):
        raise ValueError(f"--max-latency must be a positive number of seconds, got {limit:g}")
    check_timing_options(args)
    if (kind == "latency") != bool(args.link):
        raise ValueError("--max-latency needs --link SPEC (the link the latency is on)" if kind == "latency"
                         else "--link is only used with --max-latency")
    target = calibrate.Target(kind, limit, args.delta, stat=args.latency_stat if kind == "latency" else "mean")
    runs = list({run.name: run for d in args.run_dirs for run in find_runs(d)}.values())  # each run once
    test_runs = find_runs(args.test) if args.test else []
    scorer = Scorer(include_paths=include_paths(runs + test_runs))
    records = calibrate.always_records(runs, args.task, " ".join(args.run_dirs))
    samples, names, system, score = calibrate.samples_of(records, args.task, args.score, scorer)
    timed = {}  # --max-latency: each sample's latencies under the link
    if kind == "latency":
        from collab_eval.analysis.latency import Latencies
        timed = dict(latency=Latencies.of(records, args.link, latency_costs(args)), link=args.link.spec)
    test = None
    if args.test:
        test_records = calibrate.always_records(test_runs, args.task, args.test)
        test_samples, test_names, test_system, _ = calibrate.samples_of(test_records, args.task, score, scorer)
        if test_system != system:
            raise ValueError(f"--test {args.test} is a run of {test_system}, the calibration runs of {system}")
        test = (test_samples, test_names)
        if timed:
            timed["test_latency"] = Latencies.of(test_records, args.link, latency_costs(args))
    result = calibrate.calibrate(samples, names, target, task=args.task, system=system, score=score,
                                 calib_fraction=args.calib_fraction, seed=args.seed, test=test,
                                 randomise=not args.deterministic, **timed)
    print(json.dumps(result.model_dump(), allow_nan=False) if args.json else calibrate.calibration_table(result))
    return 0


def add_link_options(parser, several: bool) -> None:
    """--link and the options of how a sample's steps are timed (docs/latency.md)."""
    parser.add_argument("--link", action="append" if several else "store", type=link_spec, default=[] if several
                        else None, metavar="SPEC",
                        help="a link profile: UP[/DOWN][@RTT] (e.g. 1mbit@50ms, 10mbit/50mbit@20ms) or "
                             "trace:UP_FILE[,DOWN_FILE][@RTT] (mahimahi traces)" + ("; repeatable" if several else ""))
    parser.add_argument("--server-flops-per-second", type=float, metavar="F",
                        help="time the server's steps as their FLOPs / F instead of the measured seconds")
    parser.add_argument("--edge-scale", type=float, default=1.0, metavar="K",
                        help="multiply the edge's measured seconds by K (a slower device: K > 1; default 1)")
    if not several:
        parser.add_argument("--latency-stat", choices=["mean", "p95"], default="mean",
                            help="the latency statistic --max-latency bounds (default %(default)s)")


def glued_link_values(argv: list[str]) -> list[str]:
    """``--link -1mbit@50ms`` as ``--link=-1mbit@50ms``: argparse takes a value starting with "-"
    for an option and says the argument is missing; glued, the spec reaches its own check."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--link" and i + 1 < len(argv) and argv[i + 1].startswith("-") and argv[i + 1] != "--":
            out.append(f"--link={argv[i + 1]}")
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def check_timing_options(args) -> None:
    """The timing options apply to latency only: without --link they are refused, not ignored."""
    given = [name for name, value, default in (("--edge-scale", args.edge_scale, 1.0),
                                                ("--server-flops-per-second", args.server_flops_per_second, None))
             if value != default]
    if given and not args.link:
        raise ValueError(f"{' and '.join(given)} time a sample's steps for the latency under --link; "
                         "without --link nothing uses them (add --link SPEC, or leave them out)")


def link_spec(text: str):
    from collab_eval.analysis.link import LinkError, parse_link
    try:
        return parse_link(text)
    except LinkError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def latency_costs(args):
    from collab_eval.analysis.latency import Costs
    return Costs(server_flops_per_second=args.server_flops_per_second, edge_scale=args.edge_scale)


def floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def system_pair(text: str) -> tuple[str, str]:
    run, sep, base = text.partition("=")
    if not (sep and run and base):
        raise argparse.ArgumentTypeError("expected RUN_SYSTEM=BASELINE_SYSTEM (e.g. name:jpeg:5=name:png), "
                                         f"got {text!r}")
    return run, base


if __name__ == "__main__":
    raise SystemExit(main())
