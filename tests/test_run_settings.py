"""The run's settings declared once (collab_eval.run_settings): what the adapter parses, records,
matches on resume and documents is derived from the one declaration, and records keep their
exact shape (key order included: records must stay byte for byte what they were)."""
import math
from pathlib import Path

import pytest

from collab_eval import run_settings, systems
from collab_eval.model_args import ModelArgError
from collab_eval.run_settings import ARGS, RunSettings

ROOT = Path(__file__).parent.parent


def no_family_args() -> dict:
    return {}


def qwen_like(max_pixels=None, min_pixels=None) -> dict:
    return {"max_pixels": max_pixels, "min_pixels": min_pixels}


def parse(tmp_path, family_args=no_family_args, **given) -> RunSettings:
    return RunSettings.parse({"pretrained": "org/does-not-matter", "records_dir": str(tmp_path), **given}, family_args)


def test_the_docs_table_is_the_declaration():
    """docs/model-args.md's shared args are generated from the declaration
    (python -m collab_eval.run_settings docs/model-args.md rewrites them)."""
    text = (ROOT / "docs" / "model-args.md").read_text()
    assert run_settings.with_docs_table(text) == text, "run: python -m collab_eval.run_settings docs/model-args.md"
    for arg in ARGS:
        assert f"| `{arg.name}` | " in text


def test_a_default_run_records_what_it_always_recorded(tmp_path):
    """The record's settings and the run plan's, key for key and in order, as the adapter wrote
    them before the declaration existed (a threshold run: its score is recorded after the codec)."""
    settings = parse(tmp_path)
    assert list(settings.recorded().items()) == [
        ("codec", "png"), ("score", "max"), ("layer", None), ("dtype", "auto"), ("max_new_tokens", 32),
        ("reuse_prefix", True), ("locator", "rel_att"), ("highres", False)]
    assert settings.of_run("collab_llava") == {
        "adapter": "collab_llava", "model": "org/does-not-matter", "policy": "threshold", "threshold": 1.0,
        "rate": 0.5, "seed": 0, "codec": "png", "score": "max", "layer": None, "max_new_tokens": 32, "dtype": "auto",
        "reuse_prefix": True, "locator": "rel_att", "highres": False}


def test_chosen_settings_and_family_args_are_recorded_after_the_shared_ones(tmp_path):
    settings = parse(tmp_path, qwen_like, policy="always", codec="JPEG:80", layer="2", max_pixels="9216",
                     threads=3, batch_size="auto", edge_workers=0, threshold="-inf")
    assert list(settings.recorded().items()) == [
        ("codec", "jpeg:80"), ("layer", 2), ("dtype", "auto"), ("max_new_tokens", 32), ("reuse_prefix", True),
        ("locator", "rel_att"), ("highres", False), ("max_pixels", "9216"), ("min_pixels", None)]
    # Execution only: checked, kept for the run, recorded nowhere.
    assert (settings.threads, settings.batch_size, settings.edge_workers) == (3, 1, 0)
    run = settings.of_run("collab_qwen2_vl")
    assert run["score"] == "max" and run["threshold"] == -math.inf and "threads" not in run
    assert set(run) - set(settings.recorded()) == {"adapter", "model", "policy", "threshold", "rate", "seed", "score"}


def test_unknown_args_are_refused_listing_the_declared_and_the_familys(tmp_path):
    with pytest.raises(ModelArgError) as err:
        parse(tmp_path, qwen_like, colour="red")
    allowed = sorted([*(a.name for a in ARGS), "max_pixels", "min_pixels"])
    assert str(err.value) == f"unknown model arg(s) ['colour']; allowed: {allowed}"


def test_systems_default_to_the_declared_defaults(tmp_path):
    """report and check assume the declared defaults for what a record does not hold; a family's
    own arg at None is the same system as a record without it."""
    assert systems.DEFAULTS == {a.name: a.default for a in ARGS if a.role == run_settings.SYSTEM}
    assert systems.DEFAULTS == {k: v for k, v in parse(tmp_path).recorded().items() if k != "score"}
    assert systems.same_system({"codec": "png"}, {"max_pixels": None, "qformer_layer": None})
    assert not systems.same_system({"codec": "png"}, {"max_pixels": 9216})
    assert systems.system_key("q", {"max_pixels": 9216, "highres": True}) == "q:png highres=true max_pixels=9216"
