"""The edge's CPU time per sample, by step, for a given original size and codec.

    python -m collab_eval.lab.edge_timing [--sizes 1024x768,2048x1536] [--codecs png,jpeg:90]
        [--repeat 5] [--side 336] [--image PATH]

What a GPU user needs to know to see where the harness would bind: the milliseconds of CPU the
edge spends on one sample, step by step, on one thread (``time.thread_time``; median over
``--repeat``). The steps are the pipeline's own functions:

- ``decode``: the stored document (the original encoded with the codec) decoded by
  ``edge.sanitize``;
- ``global``: ``edge.transmit`` of the whole original framed as LLaVA-1.5 frames it (short side
  to ``--side``, centre crop), encoded, counted, decoded;
- ``crop``: the same for a RoI of twice the base window (the crop of a retransmitted sample);
- ``original``: the original's size for ``bytes_original`` (the pixels hashed for the cache key,
  then encoded), which no server step needs.

Before issue 33 all of it ran on the model's thread; now the edge's threads run it beside the
server's passes (docs/model-args.md, "Edge threads"), and the model's thread waits only when the
edge's threads fall behind. The default original is a real photo (matplotlib's
``grace_hopper.jpg``, 512x600) resized to each size: upscaling makes it smoother than a camera's
original, so its PNG times are on the low side; ``--image`` takes your own.
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from PIL import Image

from collab_eval.edge import Codec, encoded_size, sanitize, transmit
from collab_eval.pipeline import image_key

STEPS = ("decode", "global", "crop", "original")


def llava_frame(width: int, height: int, side: int, box: tuple[float, float, float, float] | None = None):
    """LLaVA-1.5's framing of ``box`` (default: the whole image): short side to ``side``, centre
    crop to a square (model_adapters.llava does this from the processor's own settings)."""
    x0, y0, x1, y1 = box or (0.0, 0.0, float(width), float(height))
    short = min(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return (cx - short / 2, cy - short / 2, cx + short / 2, cy + short / 2), (side, side)


def cpu_ms(step: Callable[[], object], repeat: int) -> float:
    """Median CPU time of ``step`` on this thread, in milliseconds."""
    times = []
    for _ in range(repeat):
        started = time.thread_time()
        step()
        times.append((time.thread_time() - started) * 1e3)
    return statistics.median(times)


def edge_costs(original: Image.Image, codec: Codec, side: int, repeat: int) -> dict[str, float]:
    """Milliseconds of CPU per step (STEPS) for one sample on ``original``."""
    w, h = original.size
    base = min(w, h, 2 * side)  # a RoI twice the encoder's input, as the window search picks on large originals
    roi = ((w - base) / 2, (h - base) / 2, (w + base) / 2, (h + base) / 2)

    def size_of_original():
        image_key(original)
        return encoded_size(original, codec)

    stored = codec.encode(original)  # the document as a dataset stores it
    return {"decode": cpu_ms(lambda: sanitize(stored), repeat),
            "global": cpu_ms(lambda: transmit(original, *llava_frame(w, h, side), codec), repeat),
            "crop": cpu_ms(lambda: transmit(original, *llava_frame(w, h, side, roi), codec), repeat),
            "original": cpu_ms(size_of_original, repeat)}


def photo(path: str | None, size: tuple[int, int]) -> Image.Image:
    if path is None:
        from matplotlib import cbook
        path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    return Image.open(path).convert("RGB").resize(size, Image.Resampling.BICUBIC)


def table(rows: list[tuple[str, str, dict[str, float]]]) -> str:
    """Each step's milliseconds, their total (all of it was on the model's thread before the edge's
    threads), and the samples per second one edge thread sustains."""
    lines = ["| original | codec | " + " | ".join(STEPS) + " | total | samples/s per edge thread |",
             "|---|---|" + "---|" * (len(STEPS) + 2)]
    for size, codec, ms in rows:
        total = sum(ms.values())
        lines.append(f"| {size} | {codec} | " + " | ".join(f"{ms[s]:.1f}" for s in STEPS)
                     + f" | {total:.1f} | {1e3 / total:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1024x768,2048x1536", help="originals, WxH, comma-separated")
    parser.add_argument("--codecs", default="png,jpeg:90")
    parser.add_argument("--repeat", type=int, default=5, help="runs per step (the median is printed)")
    parser.add_argument("--side", type=int, default=336, help="the encoder's input side (LLaVA-1.5: 336)")
    parser.add_argument("--image", default=None, help="a photo to resize to each size (default: grace_hopper.jpg)")
    args = parser.parse_args(argv)
    rows = []
    for size in args.sizes.split(","):
        w, h = (int(v) for v in size.lower().split("x"))
        original = photo(args.image, (w, h))
        for spec in args.codecs.split(","):
            rows.append((f"{w}x{h}", spec, edge_costs(original, Codec.parse(spec), args.side, args.repeat)))
    print(f"the edge's CPU milliseconds per sample, one thread, median of {args.repeat}; encoder input {args.side} px")
    print(table(rows))


if __name__ == "__main__":
    main()
