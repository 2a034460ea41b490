"""What a collab run costs against lmms-eval's own adapter for the same family, on the same checkpoint.

    python -m collab_eval.lab.timing [--families llava,qwen2_vl,...] [--pretrained geometry-llava]
        [--tasks smalldetail_read] [--limit 8] [--max-new-tokens 8] [--rounds 3] [--threads 1]
        [--device cpu] [--systems lmms,never,always,never:8,always:8]

For every registered family with a tiny or trained checkpoint (collab_eval.families;
``--families`` picks some), runs its lmms-eval adapter (``lmms``, or its own name: ``llava_hf``
for LLaVA and LLaVA-NeXT), ``collab_<family> policy=never`` (one image, one answer: what that
adapter does) and ``policy=always`` (stage 1, the generic-prompt map, stage 2 on every sample),
``never:8`` / ``always:8`` with ``batch_size=8``, through lmms-eval's
``simple_evaluate`` in this one process, interleaved round by round, each round on a
freshly loaded model (so the generic-prompt pass is paid, as in a user's run). Time is
the CPU time of ``generate_until`` (CUDA: its wall time, synchronised); loading and
scoring are excluded. The collab systems run at the dtype the adapter loads where it takes none
(bfloat16 for ``qwen2_5_vl`` and ``qwen3_vl``), else float32 (``--dtype`` overrides both); the
Qwen adapters get collab's default pixel budget. Prints each round's ratio to the lmms-eval
adapter, the always run's FLOP floor (its records' FLOPs per sample over its stage 1's: one
answer, what never and the adapter compute; where the work is compute-bound, always's time
ratio cannot fall below it), each system's split
of the wall time of ``generate_until`` into model time (the server's passes: the lmms-eval
adapter's ``model.generate`` calls; a collab run's stage 1, RoI and stage 2 steps as its records
time them on the model's thread) and harness time (everything else on that critical path), then
the peak memory rise of each collab stage (CPU: resident set size; CUDA: allocated) from one
more, untimed, ``always`` run; at the end one table of every family's median ratios and FLOP
floor. The default checkpoint is the family's tiny one (else its trained one; a family with
neither is skipped, said so); LLaVA's is ``geometry-llava``, LLaVA-1.5's image geometry (576
image tokens) at CPU-sized widths. Machines here are shared and noisy: read the ratios, not the
seconds.

    python -m collab_eval.lab.timing --main-job [--main-job-limit N] [--rounds 3]

instead times the README's main job (``smalldetail-llava``, ``policy=always``, both
smalldetail tasks, ``--log_samples``) against lmms-eval's ``llava_hf`` on the same checkpoint
and documents: each a whole ``lmms-eval`` process, interleaved round by round, wall time; and
the collab process's model and harness time (its records and its journal).
"""
from __future__ import annotations

import argparse
import inspect
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# llava_hf passes plain-string messages: give it LLaVA-1.5's prompt in that form.
LLAVA_HF_TEMPLATE = "{% for m in messages %}USER: {{ m['content'] }} {% endfor %}ASSISTANT:"
# What a family's lmms-eval adapter needs beyond the family's lmms_eval_model_args to run what collab
# runs (LLaVA-NeXT's tiny checkpoint has a chat template llava_hf can use; geometry-llava needs one).
QWEN_BUDGET = {"max_pixels": 336 * 336, "min_pixels": 56 * 56}  # collab_qwen*_vl's default (model_adapters.qwen2_vl)
REFERENCE_ARGS = {"llava": {"chat_template": LLAVA_HF_TEMPLATE},
                  "qwen2_vl": QWEN_BUDGET, "qwen2_5_vl": QWEN_BUDGET, "qwen3_vl": QWEN_BUDGET}
# What an lmms-eval adapter loads whatever it is told (no dtype argument): the collab systems run at
# the same dtype unless --dtype says otherwise, so that a ratio compares the same arithmetic.
REFERENCE_DTYPE = {"qwen2_5_vl": "bfloat16", "qwen3_vl": "bfloat16"}
TIMING_CHECKPOINTS = {"llava": "geometry-llava"}  # else the family's tiny checkpoint, else its trained one


@dataclass(frozen=True)
class FamilyTiming:
    """One family's medians against its lmms-eval adapter, and its always run's FLOP floor."""
    family: str
    reference: str
    checkpoint: str
    ratios: dict[str, float]  # system -> median ratio of its time to the reference's
    flop_floor: float | None  # an always run's FLOPs over one answer's (its records), None without one


def timing_checkpoint(family) -> str | None:
    """The checkpoint a family is timed on by default: geometry-llava for LLaVA, else its tiny
    checkpoint, else its trained one; None when it has neither (a plug-in without them)."""
    return TIMING_CHECKPOINTS.get(family.name) or family.tiny_name or family.trained


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", help="registered families, comma-separated (default: every one)")
    parser.add_argument("--pretrained", help="the checkpoint (one family only; default: geometry-llava for "
                                             "llava, the family's tiny checkpoint for the others)")
    parser.add_argument("--tasks", default="smalldetail_read")
    parser.add_argument("--limit", type=int, default=8, help="documents per task")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (one more, first, warms up)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (one: timings on a shared "
                        "machine are otherwise bimodal; see docs/running.md, 'CPU threads')")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="the collab systems' dtype (default: float32, or what the "
                        "family's lmms-eval adapter loads where it takes none: bfloat16 for qwen2_5_vl, qwen3_vl)")
    parser.add_argument("--clock", choices=("cpu", "wall"), default=None,
                        help="cpu: process CPU time (default on CPU); wall: elapsed time (default on CUDA)")
    parser.add_argument("--systems", default="lmms,never,always",
                        help="lmms (the family's lmms-eval adapter, also by its name, e.g. llava_hf; batch 1), "
                             "never, always; a collab policy with :N runs with batch_size=N (never:8, always:8)")
    parser.add_argument("--records-dir", default="collab_records/timing")
    parser.add_argument("--main-job", action="store_true",
                        help="time the README's main job against llava_hf, whole processes, wall time")
    parser.add_argument("--main-job-limit", type=int, default=None,
                        help="with --main-job: documents per task (default: the whole test splits, as the README)")
    parser.add_argument("--edge-workers", type=int, default=None,
                        help="with --main-job: the main job's edge_workers (default: the adapter's; 0: the edge's "
                             "work in line on the model's thread, as before issue 33)")
    args = parser.parse_args(argv)
    if args.main_job:
        return main_job(args.rounds, args.main_job_limit, args.threads, args.edge_workers)

    from collab_eval import families
    chosen = [families.get(name) for name in args.families.split(",")] if args.families else families.all_families()
    if args.pretrained and len(chosen) > 1:
        parser.error("--pretrained names one family's checkpoint: give --families too")
    results, skipped = [], []
    for family in chosen:
        if not args.pretrained and timing_checkpoint(family) is None:
            skipped.append(family.name)
            print(f"{family.model_id}: skipped, no tiny or trained checkpoint (give --pretrained)")
            continue
        results.append(time_family(family, args, parser))
    print_table(results, skipped)


def print_table(results: list[FamilyTiming], skipped: list[str]) -> None:
    """Every family timed: its median ratios to its lmms-eval adapter and its always run's FLOP floor."""
    systems = list(dict.fromkeys(name for r in results for name in r.ratios))
    print("\nevery family against its lmms-eval adapter: median ratio of the time of generate_until; FLOP floor: an "
          "always run's FLOPs over one answer's (stage 1), from its records, the ratio always cannot go below where "
          "the work is compute-bound")
    print(f"  {'family':12s} {'adapter':12s} {'checkpoint':18s} " + " ".join(f"{n:>9s}" for n in systems)
          + "  FLOP floor of always")
    for r in results:
        print(f"  {r.family:12s} {r.reference:12s} {r.checkpoint:18s} "
              + " ".join(f"{r.ratios[n]:9.2f}" if n in r.ratios else f"{'-':>9s}" for n in systems)
              + (f"  {r.flop_floor:.2f}" if r.flop_floor is not None else "  -"))
    if skipped:
        print(f"  not timed (no tiny or trained checkpoint): {', '.join(skipped)}")


def time_family(family, args, parser) -> FamilyTiming:
    """The timing rounds, ratios, FLOP floor and memory of one family against its lmms-eval adapter."""
    import torch
    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    clock = args.clock or ("wall" if cuda else "cpu")

    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.models import get_model
    from lmms_eval.tasks import TaskManager

    from collab_eval.checkpoints import resolve
    from collab_eval.shipped import TASKS_DIR

    checkpoint = args.pretrained or timing_checkpoint(family)
    path = resolve(checkpoint)
    reference = family.lmms_eval_model
    dtype = args.dtype or REFERENCE_DTYPE.get(reference, "float32")

    def collab(policy, batch_size=1):
        return lambda: get_model(family.model_id)(
            pretrained=path, policy=policy, device=args.device, dtype=dtype, threads=args.threads,
            max_new_tokens=args.max_new_tokens, records_dir=args.records_dir, batch_size=batch_size)

    systems = [reference if name == "lmms" else name for name in args.systems.split(",")]
    reference_args = {**dict(kv.split("=", 1) for kv in family.lmms_eval_model_args.split(",") if kv),
                      **REFERENCE_ARGS.get(family.name, {}), "device": args.device}
    if "device_map" in reference_args:
        reference_args["device_map"] = args.device
    reference_class = get_model(reference, force_simple=True)
    if "dtype" in inspect.signature(reference_class.__init__).parameters:  # qwen2_vl (auto), qwen2_5_vl take none
        reference_args["dtype"] = dtype
    factories = {reference: lambda: reference_class(pretrained=path, **reference_args)}
    for name in systems:
        if name != reference:
            policy, _, batch = name.partition(":")
            if policy not in ("never", "always"):
                parser.error(f"--systems: {name!r} is not lmms ({reference}), never[:N] or always[:N]")
            factories[name] = collab(policy, int(batch or 1))
    tasks = TaskManager(include_path=str(TASKS_DIR))

    def evaluate(lm):
        simple_evaluate(model=lm, tasks=args.tasks.split(","), task_manager=tasks, batch_size=1, limit=args.limit,
                        gen_kwargs=f"max_new_tokens={args.max_new_tokens}", verbosity="WARNING")

    def now():
        if cuda:
            torch.cuda.synchronize()
        return time.process_time() if clock == "cpu" else time.perf_counter()

    times = {name: [] for name in systems}
    splits = {name: [] for name in systems}
    records = {name: [] for name in systems}  # each collab round's record file
    for round_ in range(args.rounds + 1):  # round 0 warms caches and is not counted
        for name in systems:
            lm = factories[name]()
            spent, walls = [], []
            generate = lm.generate_until

            def timed(requests, generate=generate, spent=spent, walls=walls):
                started, wall = now(), time.perf_counter()
                try:
                    return generate(requests)
                finally:
                    spent.append(now() - started)
                    walls.append(time.perf_counter() - wall)

            lm.generate_until = timed
            model_time = model_seconds(lm, cuda)
            evaluate(lm)
            if round_:
                times[name].append(sum(spent))
                splits[name].append(Split(sum(walls), model_time()))
                if hasattr(lm, "session"):
                    records[name].append(lm.session.path)
            del lm

    print(f"{family.model_id} against {reference}: checkpoint {checkpoint}, tasks {args.tasks} "
          f"(limit {args.limit}), max_new_tokens "
          f"{args.max_new_tokens}, device {args.device} ({dtype}), {args.threads} torch thread(s), "
          f"{args.rounds} interleaved rounds, fresh model each, {clock} time of generate_until")
    for name in systems:
        print(f"  {name:10s} median {statistics.median(times[name]):8.2f} s  "
              f"({', '.join(f'{t:.2f}' for t in times[name])})")
    medians = {}
    if reference in systems:
        for name in systems:
            if name != reference:
                ratios = [t / base for t, base in zip(times[name], times[reference])]
                medians[name] = statistics.median(ratios)
                print(f"ratio {name} / {reference}: median {medians[name]:.2f} "
                      f"(rounds {min(ratios):.2f}-{max(ratios):.2f})")
    always = next((name for name in systems if name.partition(":")[0] == "always" and records[name]), None)
    floor = flop_floor(records[always]) if always else None
    if floor:
        print(f"FLOP floor of always ({always}'s records): {floor.ratio:.2f} x one answer's FLOPs (per sample: "
              f"stage 1 {floor.stage1 / 1e9:.4g} GFLOPs, then generic pass, locating and stage 2 "
              f"{(floor.total - floor.stage1) / 1e9:.4g} GFLOPs): where the work is compute-bound, always's ratio to "
              f"{reference} cannot fall below about this")

    print("critical path, wall time of generate_until (median over rounds): model = the server's passes, "
          "harness = the rest")
    for name in systems:
        print(f"  {name:10s} " + Split.median(splits[name]).line())

    if "always" in systems:
        rises = stage_memory(factories["always"], evaluate, cuda)
        print("peak memory rise per call of each stage (median over the samples), MiB: "
              + ", ".join(f"{stage} {mib:.1f}" for stage, mib in rises.items()))
    return FamilyTiming(family.name, reference, checkpoint, medians, floor.ratio if floor else None)


@dataclass(frozen=True)
class FlopFloor:
    """Mean FLOPs per sample of an always run: all of it, and its stage 1 (one answer, what
    never and the lmms-eval adapter compute)."""
    total: float
    stage1: float

    @property
    def ratio(self) -> float:
        return self.total / self.stage1


def flop_floor(paths: list[Path]) -> FlopFloor | None:
    """From an always run's records (failed samples left out); None without a sample."""
    from collab_eval.records import STAGE1_PARTS, read_records
    done = [r for r in read_records([p for p in paths if Path(p).exists()]) if not r.error]
    stage1 = sum(r.flops.get(part, 0) for r in done for part in STAGE1_PARTS)
    if not stage1:
        return None
    return FlopFloor(total=sum(r.flops_total for r in done) / len(done), stage1=stage1 / len(done))


@dataclass(frozen=True)
class Split:
    """A run's wall time of generate_until and the part of it in the model's passes."""
    wall: float
    model: float

    @property
    def harness(self) -> float:
        return self.wall - self.model

    @staticmethod
    def median(splits: list["Split"]) -> "Split":
        return Split(statistics.median(s.wall for s in splits), statistics.median(s.model for s in splits))

    def line(self) -> str:
        share = self.harness / self.wall if self.wall else float("nan")
        return (f"wall {self.wall:8.2f} s  model {self.model:8.2f} s  harness {self.harness:7.2f} s "
                f"({share:.0%} of the wall time)")


# The record steps that are the server's passes (the rest of a record's seconds is the edge's).
SERVER_STEPS = ("stage1", "roi", "stage2")


def model_seconds(lm, cuda: bool):
    """A function giving, after the run, the seconds ``lm`` spent in its model's passes: a collab
    adapter's records' server steps (stage 1, RoI, stage 2, timed on the model's thread), else
    the wall time of its model's ``generate`` calls (lmms-eval's HF adapters, llava_hf)."""
    if hasattr(lm, "session"):  # a collab adapter: what its records say
        return lambda: records_model_seconds([lm.session.path])
    import torch
    model = lm.model
    spent = []
    generate = model.generate

    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return generate(*args, **kwargs)
        finally:
            if cuda:
                torch.cuda.synchronize()
            spent.append(time.perf_counter() - started)

    model.generate = timed
    return lambda: sum(spent)


def records_model_seconds(paths: list[Path]) -> float:
    """Sum over the records of the server's steps' seconds (a batched step: each sample's share)."""
    from collab_eval.records import read_records
    return sum(record.seconds.get(step, 0.0) for record in read_records([p for p in paths if Path(p).exists()])
               for step in SERVER_STEPS)


def main_job(rounds: int, limit: int | None, threads: int, edge_workers: int | None = None) -> None:
    """The README's main job and lmms-eval's llava_hf on the same checkpoint and documents, each a
    whole ``lmms-eval`` process (start, load, evaluate, score, write), interleaved; wall time."""
    from collab_eval.checkpoints import resolve
    from collab_eval.run_session import RunFinished, read_journal
    from collab_eval.shipped import TASKS_DIR
    path = resolve("smalldetail-llava")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    walls = {"llava_hf": [], "collab": []}
    collab_splits = []
    with tempfile.TemporaryDirectory(prefix="main-job-") as tmp:
        for round_ in range(rounds):
            for system in walls:
                out = Path(tmp) / f"{system}-{round_}"
                workers = "" if edge_workers is None else f"edge_workers={edge_workers},"
                model_args = (f"pretrained={path},policy=always,threads={threads},{workers}"
                              f"records_dir={out / 'records'}"
                              if system == "collab" else
                              f"pretrained={path},device=cpu,device_map=cpu,dtype=float32,"
                              f"chat_template={LLAVA_HF_TEMPLATE}")
                model = "collab_llava" if system == "collab" else "llava_hf"
                cmd = [sys.executable, "-m", "lmms_eval", "--model", model, "--model_args", model_args,
                       "--tasks", "smalldetail_read,smalldetail_exist",
                       "--include_path", str(TASKS_DIR), "--output_path", str(out), "--log_samples",
                       "--verbosity", "DEBUG", *(["--limit", str(limit)] if limit else [])]
                started = time.perf_counter()
                done = subprocess.run(cmd, env=env, capture_output=True, text=True)
                walls[system].append(time.perf_counter() - started)
                if done.returncode != 0 or not list(out.glob("**/*_results.json")):
                    raise SystemExit(f"{system} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
                if system == "collab":
                    (journal,) = (out / "records").glob("*.run.ndjson")
                    finished = [e for e in read_journal(journal) if isinstance(e, RunFinished)]
                    collab_splits.append(Split(sum(e.seconds or 0.0 for e in finished),
                                               records_model_seconds(list((out / "records").glob("*.jsonl")))))
    ratios = [c / b for c, b in zip(walls["collab"], walls["llava_hf"])]
    print(f"the README's main job (smalldetail-llava, policy=always, smalldetail_read + smalldetail_exist"
          f"{f', --limit {limit}' if limit else ''}) against llava_hf on the same checkpoint and documents: "
          f"whole lmms-eval processes, {rounds} interleaved round(s), wall time, {threads} torch thread(s), "
          f"edge_workers {'default' if edge_workers is None else edge_workers}")
    for system, values in walls.items():
        print(f"  {system:9s} median {statistics.median(values):8.2f} s  ({', '.join(f'{v:.2f}' for v in values)})")
    print(f"ratio main job / llava_hf: median {statistics.median(ratios):.2f} "
          f"(rounds {min(ratios):.2f}-{max(ratios):.2f})")
    print("  the main job's generate_until (its journal), median: " + Split.median(collab_splits).line())


def stage_memory(make, evaluate, cuda: bool) -> dict[str, float]:
    """Run ``always`` once with the server's two calls wrapped: the rise of memory above its
    level at each call's start, per stage (median over the calls)."""
    if not cuda:  # a fixed mmap threshold: freed tensors leave the resident set, so each rise is the stage's own
        import ctypes
        ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD, 128 KiB
    lm = make()
    server = lm.server
    rises = {"stage1": [], "generic": [], "stage2": []}
    answer_batch, attention = server.answer_batch, server.attention

    def measured_answer(requests, *args, **kwargs):
        with peak_rise(cuda) as rise:
            result = answer_batch(requests, *args, **kwargs)
        rises["stage1" if len(requests[0][0]) == 1 else "stage2"].append(rise())
        return result

    def measured_attention(*args, **kwargs):
        with peak_rise(cuda) as rise:
            result = attention(*args, **kwargs)
        rises["generic"].append(rise())
        return result

    server.answer_batch, server.attention = measured_answer, measured_attention
    evaluate(lm)
    # The median call: a stage's first call also pays one-time allocations (kernels' workspaces).
    return {stage: statistics.median(values) for stage, values in rises.items() if values}


@contextmanager
def peak_rise(cuda: bool):
    """Yields a function giving the block's peak memory above its start, in MiB: CUDA's
    allocator statistics, or the process's resident set sampled every millisecond."""
    import gc

    import torch
    # Earlier work's garbage goes first: a collection inside the block (any allocation, the
    # sampler's own, may start one) would free it there and hide the block's rise.
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        start = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        yield lambda: (torch.cuda.max_memory_allocated() - start) / 2**20
        return
    import psutil
    process = psutil.Process()
    start = peak = process.memory_info().rss
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.wait(0.001):
            peak = max(peak, process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield lambda: (peak - start) / 2**20
    finally:
        done.set()
        sampler.join()
        peak = max(peak, process.memory_info().rss)


if __name__ == "__main__":
    main()
