"""Wall-time overhead of the collab pipeline against lmms-eval's built-in adapter.

    python -m collab_eval.lab.timing [--pretrained tiny-llava] [--tasks ...] [--repeats 3]

Runs lmms-eval's ``llava_hf`` and ``collab_llava`` (policy never: both send one image and
answer once) on the same checkpoint, samples and token budget, alternating, in this one
process, and prints the ratio of their median ``generate_until`` wall times (model
loading and scoring excluded). Machines here are noisy: read the ratio, not the seconds.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained", default="tiny-llava")
    parser.add_argument("--tasks", default="collab_textvqa_mini,collab_pope_mini")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--records-dir", default="collab_records/benchmark")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on tiny models several threads on a shared "
                             "machine make timings bimodal, 3 s one round and 20 s the next)")
    args = parser.parse_args(argv)

    import torch
    torch.set_num_threads(args.threads)

    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.models import get_model
    from lmms_eval.tasks import TaskManager

    from collab_eval.checkpoints import resolve
    from collab_eval.shipped import TASKS_DIR

    path = resolve(args.pretrained)
    factories = {  # lmms-eval frees a model after each evaluation: build one per round
        # llava_hf passes plain-string messages: give it LLaVA-1.5's prompt in that form.
        "llava_hf": lambda: get_model("llava_hf", force_simple=True)(
            pretrained=path, device="cpu", device_map="cpu", dtype="float32",
            chat_template="{% for m in messages %}USER: {{ m['content'] }} {% endfor %}ASSISTANT:"),
        "collab_llava": lambda: get_model("collab_llava")(
            pretrained=path, policy="never", device="cpu", max_new_tokens=args.max_new_tokens,
            records_dir=args.records_dir),
    }
    tasks = TaskManager(include_path=str(TASKS_DIR))
    times = {name: [] for name in factories}
    for repeat in range(args.repeats + 1):  # the first round warms caches and is not counted
        for name, make in factories.items():
            lm = make()
            spent = []
            generate = lm.generate_until

            def timed(requests, generate=generate, spent=spent):
                started = time.perf_counter()
                try:
                    return generate(requests)
                finally:
                    spent.append(time.perf_counter() - started)

            lm.generate_until = timed
            simple_evaluate(model=lm, tasks=args.tasks.split(","), task_manager=tasks, batch_size=1,
                            gen_kwargs=f"max_new_tokens={args.max_new_tokens}", verbosity="WARNING")
            if repeat:
                times[name].append(sum(spent))
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"checkpoint {args.pretrained}, tasks {args.tasks}, max_new_tokens {args.max_new_tokens}, "
          f"{args.repeats} timed rounds (generate_until only), {args.threads} torch thread(s)")
    for name in factories:
        print(f"  {name:13s} median {median[name]:7.2f} s  ({', '.join(f'{t:.2f}' for t in times[name])})")
    best = {name: min(t) for name, t in times.items()}
    print(f"ratio collab_llava(policy=never) / llava_hf: median {median['collab_llava'] / median['llava_hf']:.2f}, "
          f"best-of-{args.repeats} {best['collab_llava'] / best['llava_hf']:.2f}")


if __name__ == "__main__":
    main()
