"""The synthetic small-detail benchmark and its shipped trained checkpoints (one per family).

No training here: the checkpoints are the committed ones; tests check that their configs and
tokenizers are what the training script builds, and that the script shows each family its
images and prompts exactly as the family's adapter does.
"""
import json
from pathlib import Path

import pytest
import torch
from datasets import load_dataset

from collab_eval import families
from collab_eval.lab import smalldetail as sd
from collab_eval.shipped import TASK_DATA_DIR as DATA
from tests.helpers import check_run


def test_generator_is_deterministic_and_splits_differ():
    a = sd.read_rows("test", 3)
    b = sd.read_rows("test", 3)
    assert [r["image"]["bytes"] for r in a] == [r["image"]["bytes"] for r in b]
    assert [r["answers"] for r in a] == [r["answers"] for r in b]
    train = sd.read_rows("train", 3)
    assert [r["image"]["bytes"] for r in a] != [r["image"]["bytes"] for r in train]
    assert sd.exist_rows("test", 4) == sd.exist_rows("test", 4)


def test_scene_geometry():
    from collab_eval.lab.smalldetail_families import INPUT_SIDE
    n, small = 40, 0
    for sc in sd.scenes("validation", n):
        w, h = sc.image.size
        side = min(w, h)
        is_small = sd.is_small_original((w, h))
        small += is_small
        low, high = sd.SMALL_SHORT_SIDE if is_small else sd.SHORT_SIDE
        assert low <= side <= high and max(w, h) <= sd.LONG_SIDE_MAX
        x0, y0, x1, y1 = sc.target_box
        sx0, sy0, sx1, sy1 = sc.sign_box
        assert sx0 <= x0 < x1 <= sx1 and sy0 <= y0 < y1 <= sy1
        # Inside the centred square a centre-cropping encoder sees.
        assert (w - side) // 2 <= sx0 and sx1 <= (w + side) // 2
        assert (h - side) // 2 <= sy0 and sy1 <= (h + side) // 2
        low, high = sd.SMALL_DIGIT_HEIGHT if is_small else sd.DIGIT_HEIGHT
        assert low - 3 <= y1 - y0 <= high + 3
        # The digit survives the downscale to the global view only in a small original, and
        # always fits well inside the smallest RoI window (the input side, in original pixels).
        in_global_view = (y1 - y0) * INPUT_SIDE / side
        assert in_global_view >= 13 if is_small else in_global_view <= 8
        assert max(x1 - x0, y1 - y0) <= 0.75 * INPUT_SIDE
    assert abs(small / n - sd.SMALL_SHARE) <= 0.15


def test_shipped_test_splits_match_generator_and_schema():
    from collab_eval.lab.task_data import POPE_FEATURES, TEXTVQA_FEATURES
    read = load_dataset("parquet", data_files=str(DATA / "smalldetail_read_test.parquet"), split="train")
    exist = load_dataset("parquet", data_files=str(DATA / "smalldetail_exist_test.parquet"), split="train")
    assert len(read) == len(exist) == sd.TEST_SIZE
    assert set(TEXTVQA_FEATURES) | {"target_box", "sign_box"} == set(read.column_names)
    assert set(POPE_FEATURES) | {"target_box", "sign_box"} == set(exist.column_names)
    fresh = sd.read_rows("test", 2)
    for row, new in zip(read.select(range(2)), fresh):
        assert row["answers"] == new["answers"] and row["target_box"] == new["target_box"]
        assert len(row["answers"]) == 10
    answers = exist["answer"]
    assert answers.count("yes") == answers.count("no")
    fresh = sd.exist_rows("test", 12)
    assert [r["question"] for r in fresh] == exist["question"][:12]
    # Adversarial negatives: the asked digit is the sign's on a "yes" and never on a "no".
    signs = [sc.digit for sc in sd.scenes("test", 12, stream=sd.EXIST_STREAM)]
    for row, sign in zip(exist.select(range(12)), signs):
        (asked,) = [c for c in row["question"] if c.isdigit()]
        assert (asked == sign) == (row["answer"] == "yes"), (row["question"], sign, row["answer"])


# Every registered family with a small-detail recipe, by the recipe's name (train_smalldetail
# --family): the registered family; SHIPPED: those whose trained checkpoint ships (docs/smalldetail.md).
FAMILIES = {family.recipe_class().name: family for family in families.all_families() if family.recipe}
SHIPPED = [name for name, family in FAMILIES.items() if family.trained]


def adapter_class(family: str):
    from model_adapters.lmms_adapter import adapter_class
    return adapter_class(FAMILIES[family])


@pytest.mark.parametrize("family", SHIPPED)
def test_committed_checkpoint_matches_training_config(family, tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    from collab_eval.checkpoints import resolve
    from collab_eval.lab.train_smalldetail import build_family
    path = resolve(FAMILIES[family].trained)
    built = build_family(family)
    expected, shipped = built.config.to_dict(), AutoConfig.from_pretrained(path).to_dict()
    for part in ("vision_config", "text_config", "qformer_config"):
        for key, value in expected.get(part, {}).items():
            if key in ("hidden_size", "intermediate_size", "num_hidden_layers", "depth", "embed_dim", "num_heads",
                       "num_attention_heads", "vocab_size", "image_size", "patch_size", "num_key_value_heads",
                       "spatial_merge_size", "cross_attention_frequency"):
                assert shipped[part][key] == value, (part, key)
    for key in ("image_token_id", "num_query_tokens", "vision_feature_layer", "vision_feature_select_strategy"):
        assert shipped.get(key) == expected.get(key), key
    # LLaVA-NeXT's pinpoints are the grids the recipe serves (LlavaNext.serve): serving the shipped
    # files again changes nothing.
    served = tmp_path / "served"
    served.mkdir()
    files = ("config.json", "processor_config.json")
    for name in files:
        (served / name).write_text((Path(path) / name).read_text())
    built.serve(served)
    assert [(served / name).read_text() == (Path(path) / name).read_text() for name in files] == [True, True]
    # The shipped tokenizer is the one the script trains.
    assert AutoTokenizer.from_pretrained(path).get_vocab() == built.tokenizer.get_vocab()
    metrics = json.loads((Path(path) / "training_metrics.json").read_text())
    assert metrics["family"] == family and metrics["seed"] == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_training_sees_what_the_adapter_sends(family, tmp_path):
    """Frames, prompt token ids (one image and two) and pixels of the training script equal
    the adapter's for the same scene: the checkpoint is trained on the pipeline's inputs."""
    from collab_eval.edge import transmit
    from collab_eval.lab.train_smalldetail import CODEC, Prompts, build_family
    built = build_family(family)
    # Random weights (only the inputs matter here), saved as trained: not served at a larger grid.
    built.save(built.build_model(), tmp_path / "ckpt", served=False)
    adapter = adapter_class(family)(pretrained=str(tmp_path / "ckpt"), records_dir=str(tmp_path / "records")).server
    prompts = Prompts(built)
    if family in ("qwen2-vl", "qwen2-5-vl"):  # unset, the budget is the checkpoint's own 96 x 96, not LLaVA-1.5's area
        assert (adapter.max_pixels, adapter.min_pixels, adapter.factor) == (96 * 96, 24 * 24, 12)
    scene = next(sd.scenes("test", 1))
    w, h = scene.image.size
    whole, crop = (0.0, 0.0, float(w), float(h)), (10.0, 20.0, 150.0, 160.0)
    for region in (whole, crop):
        assert adapter.frame(region) == built.frame(region)
    views = [transmit(scene.image, *adapter.frame(r), CODEC).image for r in (whole, crop)]
    for images in (views[:1], views):
        for text in (prompts.read, prompts.exist["7"]):
            sent = adapter.inputs(images, text)
            batch = built.collate([(text, [], built.pixels(images))])
            assert sent["input_ids"][0].tolist() == batch.inputs["input_ids"][0].tolist()
            torch.testing.assert_close(sent["pixel_values"].float().cpu(), batch.inputs["pixel_values"],
                                       atol=1e-2, rtol=0)
    # Every answer the tasks expect is one token, then the end of the turn.
    assert all(len(ids) == 2 and ids[-1] in adapter.eos_ids() for ids in prompts.answer_ids.values())


@pytest.mark.parametrize("family", FAMILIES)
def test_training_forward_gives_the_map_the_attention_loss_needs(family):
    """The language model runs eager while training (its attention weights are the map), even
    where the vision tower runs SDPA for speed (Qwen2-VL): one probability map per row over
    the first image's grid."""
    from collab_eval.lab.train_smalldetail import Prompts, build_family, make_data
    built = build_family(family)
    data = make_data(built, "test", 1, seed=0)  # the global view and map target training uses
    prompts = Prompts(built)
    pixels = data["global"][:1]
    batch = built.collate([(prompts.read, [], pixels), (prompts.exist["3"], [], pixels)])
    with torch.no_grad():
        maps = built.forward(built.build_model(), batch, with_maps=True, layer=built.attention_layer()).maps
    rows, cols = built.grid(pixels[0])
    assert [m.shape for m in maps] == [data["target"][0].shape] * 2 == [(rows * cols,)] * 2
    torch.testing.assert_close(torch.stack([m.sum() for m in maps]), torch.ones(2))


@pytest.mark.parametrize("family", SHIPPED)
def test_checkpoint_loads_through_adapter(family, tmp_path):
    adapter = adapter_class(family)(pretrained=FAMILIES[family].trained, policy="always", records_dir=str(tmp_path))
    model = adapter.server
    assert model.input_side == 96
    assert model.layer == {"llava": 1, "qwen2-vl": 3, "instructblip": 1, "llava-next": 1, "qwen2-5-vl": 3}[family]


@pytest.mark.slow
@pytest.mark.parametrize("family", SHIPPED)
def test_each_family_meets_the_bars_through_lmms_eval(family, trained_always_run):
    """Issue 12's bars, per family, through lmms-eval and the real adapter on the whole test
    splits (150 samples per task): always - never >= 10 points and the entropy gate (top 50%
    by stage-1 score) beating random retransmission at 50% by more than 5 points on both
    tasks; on reading also an AUROC of the score for stage-1 errors >= 0.75 and a RoI that
    holds the digit's box >= 70% of the time. docs/measurements.md lists the measured values.
    The run is the session's (tests/conftest.py trained_always_run): in CI, the one the
    regression gate checks."""
    from collab_eval.lab.smalldetail_bars import bars
    tasks = ["smalldetail_read", "smalldetail_exist"]
    run = trained_always_run(FAMILIES[family].name)
    check_run(run, tasks, sd.TEST_SIZE)
    assert not any(r["error"] for r in run.records)
    (measured,) = bars([run.out]).values()
    for task in tasks:
        b = measured[task]
        assert b["n"] == sd.TEST_SIZE
        # lmms-eval's own metric is the always accuracy the records give.
        metric = "exact_match,none" if task == "smalldetail_read" else "pope_accuracy,none"
        assert run.results["results"][task][metric] == pytest.approx(b["always"]), task
        assert b["gap_points"] >= 10, (task, b)
        assert b["gated_at_0.5"] - b["random_at_0.5"] > 0.05, (task, b)
    assert measured["smalldetail_read"]["auroc_stage1_error"] >= 0.75, measured
    assert measured["smalldetail_read"]["roi_contains_target"] >= 0.70, measured


@pytest.mark.slow
def test_the_hd_baseline_reads_what_the_low_resolution_global_view_loses(trained_always_run):
    """The paper's HD baseline (smalldetail-llava-next, never: its stage 1) against LLaVA's
    low-resolution global view (smalldetail-llava, never) on the whole reading test split,
    through lmms-eval: at least 10 points more (measured: 64.0% against 49.3%), and far from
    what the crop gives (always). The runs are the session's, as for the bars."""
    from collab_eval.lab.smalldetail_bars import bars
    hd, low = (bars([trained_always_run(FAMILIES[name].name).out]) for name in ("llava-next", "llava"))
    (hd,), (low,) = hd.values(), low.values()
    read_hd, read_low = hd["smalldetail_read"], low["smalldetail_read"]
    assert read_hd["n"] == read_low["n"] == sd.TEST_SIZE
    assert 100 * (read_hd["never"] - read_low["never"]) >= 10, (read_hd, read_low)  # accuracies: fractions
    assert 100 * (read_hd["always"] - read_hd["never"]) >= 10, read_hd


@pytest.mark.slow
def test_qwen2_5_vl_recipe_runs_and_its_loss_falls(tmp_path):
    """The smalldetail-qwen2-5-vl recipe (not trained in full here): 20 steps on 20 scenes run,
    its answer losses fall, and the checkpoint it writes loads through collab_qwen2_5_vl."""
    import re

    from collab_eval.lab.train_smalldetail import train
    lines = []
    train("qwen2-5-vl", tmp_path / "ckpt", steps=20, n_train=20, n_val=10, batch=4, threads=1, log=lines.append)
    logged = [re.match(r"step \d+ loss ([\d.]+)/([\d.]+)", line) for line in lines]
    losses = [tuple(map(float, m.groups())) for m in logged if m]
    assert len(losses) == 2 and all(last < first for first, last in zip(*losses)), lines
    server = adapter_class("qwen2-5-vl")(pretrained=str(tmp_path / "ckpt"), records_dir=str(tmp_path / "r")).server
    assert server.input_side == 96 and server.layer == 3


@pytest.mark.slow  # about 10 s: the family's tokenizer and two models built
def test_llava_next_first_stage_starts_from_smalldetail_llava():
    """The HD recipe's first stage's warm start: every tensor of smalldetail-llava copied by name
    (the row newline alone starts fresh), and the 12 px patch kernel resized to 16 px so that a
    flat image gives about the same patch features (the kernels' sums within 2% over the tower;
    1% measured; unscaled, the resize would make them 78% larger)."""
    from transformers import AutoModelForImageTextToText

    from collab_eval.checkpoints import resolve
    from collab_eval.lab.train_smalldetail import CORPUS, build_family
    stage = build_family("llava-next").earlier_stage
    assert stage.warm_start == "smalldetail-llava"
    family = stage(CORPUS)
    model = family.build_model(resolve(family.warm_start)).state_dict()
    source = AutoModelForImageTextToText.from_pretrained(resolve("smalldetail-llava")).state_dict()
    assert set(model) - set(source) == {"model.image_newline"}
    kernel = "model.vision_tower.embeddings.patch_embedding.weight"
    for name, tensor in source.items():
        if name != kernel and "position_embedding" not in name:
            assert torch.equal(model[name], tensor), name
    assert model[kernel].shape[-2:] == (16, 16) and source[kernel].shape[-2:] == (12, 12)
    flat, flat_before = model[kernel].sum((-1, -2)), source[kernel].sum((-1, -2))
    assert torch.linalg.norm(flat - flat_before) / torch.linalg.norm(flat_before) < 0.02


def test_llava_next_grows_its_resolution_in_stages():
    """The HD baseline: a first stage at llava-v1.6's pinpoints scaled to the 96 px tile (up to
    192 px, 2 x 2 tiles or 1 x 3), then the shipped recipe at every grid up to 3 x 3 (288 px),
    the second stage starting from the first's weights."""
    from collab_eval.lab.train_smalldetail import CORPUS, build_family
    family = build_family("llava-next")
    assert family.earlier_stage is not None and family.warm_start is None
    first = family.earlier_stage(CORPUS)
    assert first.warm_start == "smalldetail-llava"
    assert sorted(map(tuple, first.pinpoints)) == [(96, 192), (96, 288), (192, 96), (192, 192), (288, 96)]
    assert sorted(map(tuple, family.pinpoints)) == [(h * 96, w * 96) for h in (1, 2, 3) for w in (1, 2, 3)
                                                     if (h, w) != (1, 1)]
    # Served at every grid up to 6 x 6: the shipped config's pinpoints.
    from transformers import AutoConfig

    from collab_eval.checkpoints import resolve
    served = AutoConfig.from_pretrained(resolve("smalldetail-llava-next")).image_grid_pinpoints
    assert sorted(map(tuple, served)) == [(h * 96, w * 96) for h in range(1, 7) for w in range(1, 7)
                                          if (h, w) != (1, 1)]


@pytest.mark.slow  # about 10 s: two models built
def test_a_later_stage_starts_from_every_weight_of_the_earlier(tmp_path):
    """``start`` (train_smalldetail --start, or the earlier stage trained first): the same
    architecture, so every tensor is copied as it is; training_metrics.json keeps the earlier
    stage's own metrics where its folder has them."""
    import shutil

    from transformers import AutoModelForImageTextToText

    from collab_eval.checkpoints import resolve
    from collab_eval.lab.train_smalldetail import CORPUS, build_family, origin
    family = build_family("llava-next")
    start = tmp_path / "first"
    shutil.copytree(resolve("smalldetail-llava-next"), start)
    model = family.build_model(start).state_dict()
    source = AutoModelForImageTextToText.from_pretrained(start).state_dict()
    assert set(model) == set(source) and all(torch.equal(model[k], source[k]) for k in source)
    (start / "training_metrics.json").write_text(json.dumps({"family": "llava-next-v1.6", "read_global": 0.5}))
    assert origin(family, start) == {"earlier_stage": {"family": "llava-next-v1.6", "read_global": 0.5}}
    (start / "training_metrics.json").write_text(json.dumps({"family": "llava", "read_global": 0.5}))
    assert origin(family, start) == {"started_from": str(start)}
    first = family.earlier_stage(CORPUS)
    assert origin(first, resolve("smalldetail-llava")) == {"warm_start": "smalldetail-llava"}
    assert origin(first, start) == {"started_from": str(start)}  # --start: not the recipe's warm start


@pytest.mark.slow  # about 5 s: two short trainings
def test_training_a_later_stage_trains_its_earlier_stage_first(tmp_path, monkeypatch):
    """train("llava-next") with no start: the earlier stage (2 steps here) is trained first into a
    folder of its own, the later stage starts from every one of its weights, and the later
    stage's folder holds one checkpoint, its training_metrics.json the earlier stage's metrics."""
    from transformers import AutoModelForImageTextToText

    from collab_eval.lab import smalldetail_families
    from collab_eval.lab.train_smalldetail import train
    monkeypatch.setattr(smalldetail_families.LlavaNextV16, "steps", 2)
    lines = []
    train("llava-next", tmp_path / "ck", steps=1, n_train=6, n_val=4, batch=2, threads=1, log=lines.append)
    # The earlier stage starts from smalldetail-llava's weights, the later from the earlier's.
    first_start, later_start = [line for line in lines if line.startswith("parameters:")]
    assert "smalldetail-llava" in first_start
    earlier = Path(later_start.split("started from ")[1])
    assert earlier.parent != tmp_path / "ck" and (earlier / "model.safetensors").exists()
    metrics = json.loads((tmp_path / "ck" / "training_metrics.json").read_text())
    assert metrics["steps"] == 1 and metrics["lr"] == 1e-3
    assert metrics["earlier_stage"]["family"] == "llava-next-v1.6" and metrics["earlier_stage"]["steps"] == 2
    assert sorted(p.name for p in (tmp_path / "ck").iterdir() if p.is_dir()) == []
    first = AutoModelForImageTextToText.from_pretrained(earlier).state_dict()
    later = AutoModelForImageTextToText.from_pretrained(tmp_path / "ck").state_dict()
    assert set(first) == set(later) and any(not torch.equal(first[k], later[k]) for k in first)
    # Each folder serves as its recipe says: the earlier stage as trained, the later at up to 6 x 6.
    from transformers import AutoConfig, AutoProcessor
    grids = {folder: sorted(map(tuple, AutoConfig.from_pretrained(folder).image_grid_pinpoints))
             for folder in (earlier, tmp_path / "ck")}
    assert grids[earlier] == [(96, 192), (96, 288), (192, 96), (192, 192), (288, 96)]
    assert grids[tmp_path / "ck"] == [(h * 96, w * 96) for h in range(1, 7) for w in range(1, 7) if (h, w) != (1, 1)]
    served = AutoProcessor.from_pretrained(tmp_path / "ck").image_processor.image_grid_pinpoints
    assert sorted(map(tuple, served)) == grids[tmp_path / "ck"]
