"""Bad input gets a defined outcome: handled, or that sample fails with a clear message
in its record. It never kills the run."""
import io
import struct
import zlib

import numpy as np
import pytest
from datasets import Dataset, Features, Sequence, Value
from datasets import Image as ImageFeature
from PIL import Image

from collab_eval.costed_tasks import write_costed
from collab_eval.edge import BadImage, sanitize
from collab_eval.shipped import TASKS_DIR
from tests.helpers import check_run, evaluate


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(width=100_000, height=100_000) -> bytes:
    """A valid PNG header announcing 10^10 pixels (the data behind it is a 1x1 image)."""
    data = png_bytes(Image.new("L", (1, 1)))
    ihdr = struct.pack(">II", width, height) + data[24:29]
    chunk = b"IHDR" + ihdr
    return data[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[33:]


def exif_rotated_jpeg() -> bytes:
    """A 40x20 JPEG, left half black, whose EXIF says 'rotate 90 degrees clockwise to view'."""
    arr = np.full((20, 40, 3), 255, np.uint8)
    arr[:, :20] = 0
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", exif=exif, quality=95)
    return buf.getvalue()


def sixteen_bit() -> Image.Image:
    arr = np.tile(np.linspace(1000, 3000, 32, dtype=np.uint16), (16, 1))
    return Image.fromarray(arr)  # uint16 -> mode "I;16"


# ---- the edge's sanitize, one case each --------------------------------------
def test_modes_become_rgb_with_the_right_pixels():
    grey = sanitize(Image.new("L", (4, 4), 77))
    assert grey.mode == "RGB" and grey.getpixel((0, 0)) == (77, 77, 77)

    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    assert sanitize(rgba).getpixel((0, 0)) == (255, 255, 255)  # shows the white background

    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    assert sanitize(palette).getpixel((0, 0)) == (10, 200, 30)

    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # pure red in CMYK
    assert sanitize(cmyk).getpixel((0, 0)) == (255, 0, 0)

    # 16-bit: the range used is stretched onto 8 bits instead of clipping to white.
    stretched = np.asarray(sanitize(sixteen_bit()))[0, :, 0]
    assert stretched[0] == 0 and stretched[-1] == 255 and np.all(np.diff(stretched.astype(int)) >= 0)


def test_exif_orientation_is_applied():
    upright = sanitize(exif_rotated_jpeg())
    assert upright.size == (20, 40)
    arr = np.asarray(upright).mean(axis=2)
    assert arr[:20].mean() < 60 and arr[20:].mean() > 200  # rotated clockwise: black on top


@pytest.mark.parametrize("payload, message", [
    (b"", r"^image is empty \(0 bytes\)$"),
    (b"not an image at all", r"^not an image: no image format recognised in 19 bytes starting b'not an image at '$"),
    (png_bytes(Image.new("RGB", (64, 64), "red"))[:60], "cannot be decoded"),
    (bomb_png(), "decompression bomb|exceeds"),
])
@pytest.mark.parametrize("lenient_pil", [False, True])
def test_broken_images_raise_a_clear_error(payload, message, lenient_pil, monkeypatch):
    # lenient_pil: as after lmms-eval's import, which turns on PIL's LOAD_TRUNCATED_IMAGES globally.
    from PIL import ImageFile
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", lenient_pil)
    with pytest.raises(BadImage, match=message):
        sanitize(payload)
    with pytest.raises(BadImage, match=message):
        sanitize({"bytes": payload, "path": None})


def test_zero_sized_and_non_image_inputs():
    with pytest.raises(BadImage, match="zero size"):
        sanitize(Image.new("RGB", (0, 5)))
    with pytest.raises(BadImage, match="expected an image"):
        sanitize(42)


# ---- through lmms-eval: a dataset full of trouble ---------------------------
FEATURES = Features({
    "question_id": Value("int64"), "question": Value("string"), "image": ImageFeature(),
    "answers": Sequence(Value("string")), "ocr_tokens": Sequence(Value("string")), "image_id": Value("string"),
})

CASES = {  # name -> (image bytes, fails?)
    "ok": (png_bytes(Image.new("RGB", (120, 80), "white")), False),
    "zero_bytes": (b"", True),
    "truncated": (png_bytes(Image.effect_noise((64, 64), 40).convert("RGB"))[:100], True),
    "bomb": (bomb_png(), True),
    "tiny_2x2": (png_bytes(Image.new("RGB", (2, 2), "blue")), False),
    "cmyk_jpeg": (None, False),
    "sixteen_bit": (png_bytes(sixteen_bit()), False),
    "exif_rotated": (exif_rotated_jpeg(), False),
}


def _cmyk_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("CMYK", (90, 60), (0, 255, 255, 0)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.slow
def test_bad_images_fail_only_their_own_samples(tmp_path, tiny_llava_path):
    rows = []
    for i, (name, (data, _)) in enumerate(CASES.items()):
        rows.append({"question_id": i, "question": f"what is in the {name} image?",
                     "image": {"bytes": data if data is not None else _cmyk_jpeg(), "path": None},
                     "answers": ["x"] * 10, "ocr_tokens": [], "image_id": name})
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    Dataset.from_list(rows, features=FEATURES).to_parquet(tasks / "bad.parquet")
    (tasks / "bad_images.yaml").write_text(
        "task: bad_images\n"
        f"include: {TASKS_DIR / '_textvqa_template_yaml'}\n"
        "dataset_path: parquet\n"
        "dataset_kwargs:\n  data_files:\n    validation: bad.parquet\n"
        "test_split: validation\n")
    write_costed(tasks / "bad_images.yaml", "collab_bad_images", tasks)
    out = tmp_path / "out"
    run = evaluate("collab_llava", f"pretrained={tiny_llava_path},policy=always,records_dir={out / 'records'}",
                   "collab_bad_images", out, include_path=tasks)
    check_run(run, ["collab_bad_images"], len(CASES))
    results = run.results["results"]["collab_bad_images"]
    assert results["exact_match,none"] == 0.0
    assert results["bytes_total,none"] > 0  # finite: failed samples are costed at what they sent (nothing)

    by_name = {r["doc"]["image_id"]: r for r in run.records}
    assert set(by_name) == set(CASES)
    for name, (_, fails) in CASES.items():
        record = by_name[name]
        if fails:
            assert record["error"], name
            assert record["answer"] == "" and record["bytes_total"] == 0
        else:
            assert record["error"] is None, (name, record["error"])
            assert record["retransmitted"] and record["bytes_local"] > 0 and record["roi"] is not None
    assert by_name["zero_bytes"]["error"] == "image is empty (0 bytes)"
    assert all("0x" not in r["error"] for r in by_name.values() if r["error"])  # no object addresses
    assert "cannot" in by_name["truncated"]["error"] or "truncated" in by_name["truncated"]["error"]
    assert "exceeds" in by_name["bomb"]["error"] or "bomb" in by_name["bomb"]["error"].lower()
    assert by_name["exif_rotated"]["image_size"] == [20, 40]
    assert by_name["tiny_2x2"]["roi"] == [0, 0, 2, 2]


# ---- arguments ----------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    ({"policy": "sometimes"}, "policy must be one of"),
    ({"codec": "gif"}, "codec must be one of"),
    ({"score": "median"}, "score must be one of"),
    ({"rate": "2"}, "rate must be in"),
    ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
    ({"colour": "red"}, r"unknown model arg\(s\) \['colour'\]; allowed: .*policy"),
])
def test_invalid_model_args_fail_at_start_naming_the_argument(args, message, tmp_path):
    from model_adapters.llava import CollabLlava
    with pytest.raises(ValueError, match=message):
        CollabLlava(pretrained="does-not-matter", records_dir=str(tmp_path), **args)


def test_invalid_layer_names_the_allowed_range(tiny_llava_path, tmp_path):
    from model_adapters.llava import CollabLlava
    with pytest.raises(ValueError, match=r"layer must be in 0\.\.2"):
        CollabLlava(pretrained=tiny_llava_path, records_dir=str(tmp_path), layer=7)
    assert list(tmp_path.iterdir()) == []  # the model loaded, then refused: its run is not left in records_dir
