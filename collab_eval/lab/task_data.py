"""Small offline datasets in the exact schemas of lmms-eval's TextVQA and POPE tasks.

Images come in several sizes and aspect ratios (smaller than, near and far above the
encoder input) with a short number painted somewhere, so geometry, codecs and the
pipeline meet the cases real benchmarks bring. Deterministic for a given seed.
"""
from __future__ import annotations

import random
from pathlib import Path

from datasets import Dataset, Features, Sequence, Value
from datasets import Image as ImageFeature
from PIL import Image, ImageDraw

SIZES = [(48, 40), (96, 96), (160, 96), (96, 200), (320, 240), (300, 500), (640, 480), (512, 128)]
SHAPES = ("square", "circle")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220)}


def painted_image(rng: random.Random, size: tuple[int, int]) -> tuple[Image.Image, str, str, str]:
    """A cluttered image with one number and one coloured shape; returns what is in it."""
    w, h = size
    image = Image.new("RGB", size, tuple(rng.randrange(120, 230) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(6):  # clutter
        x, y = rng.randrange(w), rng.randrange(h)
        draw.line((x, y, x + rng.randrange(-w // 3, w // 3 + 1), y + rng.randrange(-h // 3, h // 3 + 1)),
                  fill=tuple(rng.randrange(256) for _ in range(3)), width=1)
    number = str(rng.randrange(10, 100))
    draw.text((rng.randrange(0, max(1, w - 14)), rng.randrange(0, max(1, h - 12))), number, fill=(0, 0, 0))
    colour, shape = rng.choice(sorted(COLOURS)), rng.choice(SHAPES)
    s = max(4, min(w, h) // 6)
    x, y = rng.randrange(0, w - s), rng.randrange(0, h - s)
    (draw.rectangle if shape == "square" else draw.ellipse)((x, y, x + s, y + s), fill=COLOURS[colour])
    return image, number, colour, shape


TEXTVQA_FEATURES = Features({
    "image_id": Value("string"), "question_id": Value("int64"), "question": Value("string"),
    "question_tokens": Sequence(Value("string")), "image": ImageFeature(),
    "image_width": Value("int64"), "image_height": Value("int64"),
    "answers": Sequence(Value("string")), "image_classes": Sequence(Value("string")),
    "set_name": Value("string"), "ocr_tokens": Sequence(Value("string")),
})

POPE_FEATURES = Features({
    "id": Value("string"), "question_id": Value("string"), "question": Value("string"),
    "answer": Value("string"), "image_source": Value("string"), "image": ImageFeature(),
    "category": Value("string"),
})


def textvqa_mini(n: int = 16, seed: int = 0) -> Dataset:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        size = SIZES[i % len(SIZES)]
        image, number, colour, shape = painted_image(rng, size)
        question = "what is the number in the image?"
        # Ten annotators, as in TextVQA: most agree, a few disagree.
        answers = [number] * 8 + [colour, "unanswerable"]
        rows.append({
            "image_id": f"mini{i:04d}", "question_id": 900000 + i, "question": question,
            "question_tokens": question.rstrip("?").split(), "image": image,
            "image_width": size[0], "image_height": size[1], "answers": answers,
            "image_classes": [shape], "set_name": "val", "ocr_tokens": [number, colour],
        })
    return Dataset.from_list(rows, features=TEXTVQA_FEATURES)


def pope_mini(n: int = 16, seed: int = 1) -> Dataset:
    rng = random.Random(seed)
    rows = []
    categories = ("adversarial", "popular", "random")
    for i in range(n):
        size = SIZES[(i + 3) % len(SIZES)]
        image, _, colour, shape = painted_image(rng, size)
        present = i % 2 == 0
        # Negatives are adversarial: the same shape in another colour.
        asked = colour if present else rng.choice([c for c in sorted(COLOURS) if c != colour])
        rows.append({
            "id": str(i), "question_id": str(800000 + i),
            "question": f"Is there a {asked} {shape} in the image?",
            "answer": "yes" if present else "no", "image_source": f"mini{i:04d}",
            "image": image, "category": categories[i % 3],
        })
    return Dataset.from_list(rows, features=POPE_FEATURES)


def write_all(directory: str | Path) -> list[Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, dataset in (("textvqa_mini", textvqa_mini()), ("pope_mini", pope_mini())):
        path = directory / f"{name}.parquet"
        dataset.to_parquet(path)
        written.append(path)
    return written
