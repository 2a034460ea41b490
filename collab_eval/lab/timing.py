"""What a collab run costs against lmms-eval's own adapter for the same family, on the same checkpoint.

    python -m collab_eval.lab.timing [--families llava,qwen2_vl,...] [--pretrained geometry-llava]
        [--tasks smalldetail_read] [--limit 8] [--max-new-tokens 8] [--rounds 3] [--threads 1]
        [--device cpu] [--systems lmms,never,always,never:8,always:8]

For every registered family (collab_eval.families; ``--families`` picks some), runs its
lmms-eval adapter (``lmms``, or its own name: ``llava_hf`` for LLaVA), ``collab_<family>
policy=never`` (one image, one answer: what that adapter does) and ``policy=always`` (stage 1,
the generic-prompt map, stage 2 on every sample), ``never:8`` / ``always:8`` with
``batch_size=8``, through lmms-eval's
``simple_evaluate`` in this one process, interleaved round by round, each round on a
freshly loaded model (so the generic-prompt pass is paid, as in a user's run). Time is
the CPU time of ``generate_until`` (CUDA: its wall time, synchronised); loading and
scoring are excluded. Prints each round's ratio to the lmms-eval adapter, then the peak memory rise of
each collab stage (CPU: resident set size; CUDA: allocated) from one more, untimed,
``always`` run. The default checkpoint is the family's tiny one; LLaVA's is ``geometry-llava``,
LLaVA-1.5's image geometry (576 image tokens) at CPU-sized widths. Machines here are shared and
noisy: read the ratios, not the seconds.
"""
from __future__ import annotations

import argparse
import inspect
import os
import statistics
import threading
import time
from contextlib import contextmanager

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# llava_hf passes plain-string messages: give it LLaVA-1.5's prompt in that form.
LLAVA_HF_TEMPLATE = "{% for m in messages %}USER: {{ m['content'] }} {% endfor %}ASSISTANT:"
# What an lmms-eval adapter needs beyond the family's lmms_eval_model_args to run what collab runs.
REFERENCE_ARGS = {"llava_hf": {"chat_template": LLAVA_HF_TEMPLATE},
                  "qwen2_vl": {"max_pixels": 336 * 336}}  # collab_qwen2_vl's default budget
TIMING_CHECKPOINTS = {"llava": "geometry-llava"}  # else the family's tiny checkpoint


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
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--clock", choices=("cpu", "wall"), default=None,
                        help="cpu: process CPU time (default on CPU); wall: elapsed time (default on CUDA)")
    parser.add_argument("--systems", default="lmms,never,always",
                        help="lmms (the family's lmms-eval adapter, also by its name, e.g. llava_hf; batch 1), "
                             "never, always; a collab policy with :N runs with batch_size=N (never:8, always:8)")
    parser.add_argument("--records-dir", default="collab_records/timing")
    args = parser.parse_args(argv)

    from collab_eval import families
    chosen = [families.get(name) for name in args.families.split(",")] if args.families else families.all_families()
    if args.pretrained and len(chosen) > 1:
        parser.error("--pretrained names one family's checkpoint: give --families too")
    for family in chosen:
        time_family(family, args, parser)


def time_family(family, args, parser) -> None:
    """The timing rounds, ratios and memory of one family against its lmms-eval adapter."""
    import torch
    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    clock = args.clock or ("wall" if cuda else "cpu")

    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.models import get_model
    from lmms_eval.tasks import TaskManager

    from collab_eval.checkpoints import resolve
    from collab_eval.shipped import TASKS_DIR

    checkpoint = args.pretrained or TIMING_CHECKPOINTS.get(family.name, family.tiny_name)
    path = resolve(checkpoint)
    reference = family.lmms_eval_model

    def collab(policy, batch_size=1):
        return lambda: get_model(family.model_id)(
            pretrained=path, policy=policy, device=args.device, dtype=args.dtype, threads=args.threads,
            max_new_tokens=args.max_new_tokens, records_dir=args.records_dir, batch_size=batch_size)

    systems = [reference if name == "lmms" else name for name in args.systems.split(",")]
    reference_args = {**dict(kv.split("=", 1) for kv in family.lmms_eval_model_args.split(",") if kv),
                      **REFERENCE_ARGS.get(reference, {}), "device": args.device}
    if "device_map" in reference_args:
        reference_args["device_map"] = args.device
    reference_class = get_model(reference, force_simple=True)
    if "dtype" in inspect.signature(reference_class.__init__).parameters:  # qwen2_vl takes none
        reference_args["dtype"] = args.dtype
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
    for round_ in range(args.rounds + 1):  # round 0 warms caches and is not counted
        for name in systems:
            lm = factories[name]()
            spent = []
            generate = lm.generate_until

            def timed(requests, generate=generate, spent=spent):
                started = now()
                try:
                    return generate(requests)
                finally:
                    spent.append(now() - started)

            lm.generate_until = timed
            evaluate(lm)
            del lm
            if round_:
                times[name].append(sum(spent))

    print(f"{family.model_id} against {reference}: checkpoint {checkpoint}, tasks {args.tasks} "
          f"(limit {args.limit}), max_new_tokens "
          f"{args.max_new_tokens}, device {args.device} ({args.dtype}), {args.threads} torch thread(s), "
          f"{args.rounds} interleaved rounds, fresh model each, {clock} time of generate_until")
    for name in systems:
        print(f"  {name:10s} median {statistics.median(times[name]):8.2f} s  "
              f"({', '.join(f'{t:.2f}' for t in times[name])})")
    if reference in systems:
        for name in systems:
            if name != reference:
                ratios = [t / base for t, base in zip(times[name], times[reference])]
                print(f"ratio {name} / {reference}: median {statistics.median(ratios):.2f} "
                      f"(rounds {min(ratios):.2f}-{max(ratios):.2f})")

    if "always" in systems:
        rises = stage_memory(factories["always"], evaluate, cuda)
        print("peak memory rise per call of each stage (median over the samples), MiB: "
              + ", ".join(f"{stage} {mib:.1f}" for stage, mib in rises.items()))


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
    import torch
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
