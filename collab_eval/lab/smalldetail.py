"""A synthetic small-detail benchmark: cluttered images with one small yellow sign carrying
a single digit.

Built so that the collaborative method's assumptions hold: after the edge downscales the
original to the encoder input (96 px for the smalldetail checkpoints) the sign's LOCATION
is still visible (a bright yellow blob). In a large original (448-1024 px, 60% of scenes)
its CONTENT (the digit, 22-34 px tall, 2-7 px in the global view) is lost; a crop of the
original around the sign of the RoI's size (1-2x the input side), resized to the encoder
input, shows the digit at 11-34 px. In a small original (160-256 px, 40%) the digit
(40-64 px tall) stays readable in the global view at 15-38 px, so a model can be right and
sure at stage 1 on some questions and unsure on the others, as on real benchmarks where
some text is large; the digit still fits well inside a RoI window. It is a proxy for
TextVQA-like questions, not evidence about real models.

Two tasks over the same kind of scene, in the schemas of lmms-eval's TextVQA and POPE:
- read: "what is the number on the yellow sign?" (ten identical answers, TextVQA scoring);
- exist: "Is there a sign with the number 7 in the image?" with adversarial negatives (the
  sign is always there, with another digit on it), POPE scoring.
Every row also carries ``target_box`` (the digit's box, original pixels) and ``sign_box``.

Deterministic: a split is a pure function of its seed (and of Pillow's bundled font).
"""
from __future__ import annotations

import colorsys
import io
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from collab_eval.shipped import TASK_DATA_DIR

SEEDS = {"train": 1_000, "validation": 2_000, "test": 3_000}
ASPECTS = (1.0, 4 / 3, 3 / 2, 16 / 9)
SHORT_SIDE = (448, 1024)  # short side of a large original, pixels
LONG_SIDE_MAX = 1024
DIGIT_HEIGHT = (22, 34)  # the digit glyph's height in a large original, pixels
# A share of small originals, whose digit survives the downscale: stage 1 can read these,
# so its confidence has something to tell (as on real benchmarks, where some text is large).
SMALL_SHARE = 0.4
SMALL_SHORT_SIDE = (160, 256)
SMALL_DIGIT_HEIGHT = (40, 64)  # 15-38 px in the global view; still inside a RoI window (96-192 px)
SIGN = (250, 215, 0)
READ_QUESTION = "what is the number on the yellow sign?"
EXIST_QUESTION = "Is there a sign with the number {digit} in the image?"
JPEG_QUALITY = 90  # how images are stored (and what training sees)
EXIST_STREAM = 500  # seed offset of the existence task's scenes


@dataclass
class Scene:
    image: Image.Image
    digit: str
    target_box: tuple[int, int, int, int]  # the digit glyph, original pixels
    sign_box: tuple[int, int, int, int]
    jpeg: bytes  # the stored encoding of ``image``


def is_small_original(size) -> bool:
    """Whether an original of ``size`` (width, height) is a small one: its digit survives the downscale."""
    return min(size) <= SMALL_SHORT_SIDE[1]


def _size(rng: random.Random, short_side: tuple[int, int]) -> tuple[int, int]:
    aspect = rng.choice(ASPECTS)
    short_max = min(short_side[1], int(LONG_SIDE_MAX / aspect))
    short = rng.randrange(short_side[0], short_max + 1)
    long = int(round(short * aspect))
    return (long, short) if rng.random() < 0.5 else (short, long)


def _clutter_colour(rng: random.Random) -> tuple[int, int, int]:
    """Any muted colour that is not yellow, so the sign stays the one yellow thing."""
    hue = rng.random()
    while 0.10 < hue < 0.20:
        hue = rng.random()
    r, g, b = colorsys.hsv_to_rgb(hue, rng.uniform(0.0, 0.6), rng.uniform(0.15, 0.9))
    return int(r * 255), int(g * 255), int(b * 255)


def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def scene(rng: random.Random, digit: str | None = None) -> Scene:
    """One original: background, clutter, one yellow sign with a digit inside the part of
    the image a centre-cropping encoder sees (the centred square)."""
    small = rng.random() < SMALL_SHARE
    w, h = _size(rng, SMALL_SHORT_SIDE if small else SHORT_SIDE)
    image = Image.new("RGB", (w, h), _clutter_colour(rng))
    draw = ImageDraw.Draw(image)
    # Large soft regions, then small clutter (shapes, lines, dark letters on no sign).
    for _ in range(rng.randrange(4, 9)):
        x, y = rng.randrange(w), rng.randrange(h)
        rw, rh = rng.randrange(w // 8, w // 2), rng.randrange(h // 8, h // 2)
        draw.rectangle((x - rw, y - rh, x + rw, y + rh), fill=_clutter_colour(rng))
    for _ in range(rng.randrange(25, 50)):
        x, y = rng.randrange(w), rng.randrange(h)
        s = rng.randrange(6, 70)
        kind = rng.randrange(4)
        colour = _clutter_colour(rng)
        if kind == 0:
            draw.rectangle((x, y, x + s, y + rng.randrange(6, 70)), fill=colour)
        elif kind == 1:
            draw.ellipse((x, y, x + s, y + rng.randrange(6, 70)), fill=colour)
        elif kind == 2:
            draw.line((x, y, x + rng.randrange(-120, 121), y + rng.randrange(-120, 121)), fill=colour,
                      width=rng.randrange(1, 6))
        else:
            letters = "".join(rng.choice("ABCEFHKLMNPRTXYZ") for _ in range(rng.randrange(1, 4)))
            draw.text((x, y), letters, fill=colour, font=_font(rng.randrange(12, 36)))

    digit = digit if digit is not None else str(rng.randrange(10))
    low, high = SMALL_DIGIT_HEIGHT if small else DIGIT_HEIGHT
    height = rng.randrange(low, high + 1)
    font = _font(int(round(height / 0.72)))
    gx0, gy0, gx1, gy1 = draw.textbbox((0, 0), digit, font=font)
    gw, gh = gx1 - gx0, gy1 - gy0
    pad = max(4, int(0.35 * gh))
    sw, sh = gw + 2 * pad + rng.randrange(0, pad + 1), gh + 2 * pad
    # Inside the centred square (what the encoder sees), away from its border.
    side = min(w, h)
    cx0, cy0 = (w - side) // 2, (h - side) // 2
    margin = side // 16
    sx = rng.randrange(cx0 + margin, cx0 + side - margin - sw)
    sy = rng.randrange(cy0 + margin, cy0 + side - margin - sh)
    draw.rectangle((sx, sy, sx + sw, sy + sh), fill=SIGN, outline=(30, 30, 30), width=2)
    tx, ty = sx + (sw - gw) // 2, sy + pad
    draw.text((tx - gx0, ty - gy0), digit, fill=(0, 0, 0), font=font)

    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=JPEG_QUALITY)
    stored = Image.open(io.BytesIO(buf.getvalue()))
    stored.load()
    return Scene(stored, digit, (tx, ty, tx + gw, ty + gh), (sx, sy, sx + sw, sy + sh), buf.getvalue())


def scenes(split: str, n: int, stream: int = 0):
    """The split's first ``n`` scenes (a pure function of the split's seed and ``stream``:
    each task draws its own images)."""
    rng = random.Random(SEEDS[split] + stream)
    for _ in range(n):
        yield scene(rng)


def read_rows(split: str, n: int) -> list[dict]:
    rows = []
    for i, sc in enumerate(scenes(split, n)):
        w, h = sc.image.size
        rows.append({
            "image_id": f"smalldetail-{split}-{i:05d}", "question_id": SEEDS[split] * 1000 + i,
            "question": READ_QUESTION, "question_tokens": READ_QUESTION.rstrip("?").split(),
            "image": {"bytes": sc.jpeg, "path": None},
            "image_width": w, "image_height": h, "answers": [sc.digit] * 10,
            "image_classes": ["sign"], "set_name": split, "ocr_tokens": [sc.digit],
            "target_box": list(sc.target_box), "sign_box": list(sc.sign_box),
        })
    return rows


def exist_rows(split: str, n: int) -> list[dict]:
    """Half the questions name the sign's digit (yes), half another digit (no); the
    scenes come from their own seed stream, so the two tasks do not share images."""
    rows = []
    rng = random.Random(SEEDS[split] + 1)
    for i, sc in enumerate(scenes(split, n, stream=EXIST_STREAM)):
        present = i % 2 == 0
        asked = sc.digit if present else rng.choice([d for d in "0123456789" if d != sc.digit])
        rows.append({
            "id": str(i), "question_id": f"smalldetail-{split}-exist-{i:05d}",
            "question": EXIST_QUESTION.format(digit=asked), "answer": "yes" if present else "no",
            "image_source": f"smalldetail-{split}-exist-{i:05d}",
            "image": {"bytes": sc.jpeg, "path": None}, "category": "adversarial",
            "target_box": list(sc.target_box), "sign_box": list(sc.sign_box),
        })
    return rows


def _features():
    from datasets import Features, Sequence, Value

    from collab_eval.lab.task_data import POPE_FEATURES, TEXTVQA_FEATURES
    extra = {"target_box": Sequence(Value("int64")), "sign_box": Sequence(Value("int64"))}
    return Features({**TEXTVQA_FEATURES, **extra}), Features({**POPE_FEATURES, **extra})


def read_dataset(split: str, n: int):
    from datasets import Dataset
    return Dataset.from_list(read_rows(split, n), features=_features()[0])


def exist_dataset(split: str, n: int):
    from datasets import Dataset
    return Dataset.from_list(exist_rows(split, n), features=_features()[1])


TEST_SIZE = 150


def write_test_splits(directory: str | Path = TASK_DATA_DIR, n: int = TEST_SIZE) -> list[Path]:
    """The shipped test splits: tasks/data/smalldetail_{read,exist}_test.parquet."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, dataset in (("read", read_dataset("test", n)), ("exist", exist_dataset("test", n))):
        path = directory / f"smalldetail_{name}_test.parquet"
        dataset.to_parquet(path)
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write_test_splits():
        print(p, p.stat().st_size)
