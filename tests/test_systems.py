"""Systems named by their settings (collab_eval.systems): what the adapter records, how report
labels systems that differ in one setting, how check matches a run to its baseline system."""
import json

import pytest

from collab_eval import cli
from collab_eval.analysis.runs import find_runs
from collab_eval.analysis.summary import Summary, summarise, system_labels
from collab_eval.systems import DEFAULTS
from tests.report_records import POPE, TEXTVQA, pope_records, textvqa_records, write_run

BFLOAT16 = {"codec": "png", "layer": None, "dtype": "bfloat16", "max_new_tokens": 32, "reuse_prefix": True}


def test_the_adapter_records_the_settings_that_change_answers_or_costs(tmp_path):
    from model_adapters.llava import CollabLlava
    default = CollabLlava(pretrained="tiny-llava", records_dir=str(tmp_path / "a"))
    # A default run's settings are the defaults report and check assume for records without them.
    settings = default.settings()
    assert settings.pop("score") == "max"  # the default policy is threshold: its score is a run setting
    assert settings == {k: DEFAULTS[k] for k in settings}
    assert set(settings) >= {"codec", "layer", "dtype", "max_new_tokens", "reuse_prefix"}
    chosen = CollabLlava(pretrained="tiny-llava", records_dir=str(tmp_path / "b"), policy="threshold", score="margin",
                         codec="jpeg:80", layer=1, max_new_tokens=8, reuse_prefix=False, threads=2, batch_size=4)
    assert chosen.settings() == {"codec": "jpeg:80", "score": "margin", "layer": 1, "dtype": "auto",
                                 "max_new_tokens": 8, "reuse_prefix": False, "locator": "rel_att",
                                 "highres": False}  # threads, batch size: no change


def test_records_without_settings_are_read_as_the_default_system(tmp_path):
    old = [{k: v for k, v in r.items() if k != "settings"} for r in pope_records()]
    new = [{**r, "settings": {k: DEFAULTS[k] for k in BFLOAT16}} for r in pope_records()]
    write_run(tmp_path / "old", old, "collab_llava-20260101T000000")
    write_run(tmp_path / "new", new, "collab_llava-20260101T000100")
    systems = summarise(find_runs(tmp_path / "old") + find_runs(tmp_path / "new"), seeds=0).systems
    assert set(systems) == {"hand-llava:png", "hand-llava:png #2"}  # one system, run twice


def two_dtypes(tmp_path):
    write_run(tmp_path / "f32", pope_records() + textvqa_records(), "collab_llava-20260101T000000")
    bf16 = [{**r, "settings": BFLOAT16} for r in pope_records(case=[("yes", "yes", "yes", 2.0, 300)] * 4)]
    write_run(tmp_path / "bf16", bf16, "collab_llava-20260101T000100")
    return tmp_path / "f32", tmp_path / "bf16"


@pytest.mark.slow  # a second or more: the fast tier stays under a minute
def test_two_runs_that_differ_in_dtype_are_two_systems_labelled_by_it(tmp_path):
    f32, bf16 = two_dtypes(tmp_path)
    summary = summarise(find_runs(f32) + find_runs(bf16), seeds=0)
    assert set(summary.systems) == {"hand-llava:png", "hand-llava:png dtype=bfloat16"}
    assert summary.systems["hand-llava:png dtype=bfloat16"].settings["dtype"] == "bfloat16"
    assert system_labels(summary) == {"hand-llava:png": "hand-llava dtype=auto",
                                      "hand-llava:png dtype=bfloat16": "hand-llava dtype=bfloat16"}
    assert cli.main(["report", str(f32), str(bf16), "--out", str(tmp_path / "report"), "--seeds", "0"]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| hand-llava dtype=bfloat16 | 4 |" in text  # the headline's system column
    assert "collab\\_llava-20260101T000100 | collab | hand-llava dtype=bfloat16 |" in text  # the runs table
    assert "@" not in "".join(line for line in text.splitlines() if line.startswith("| collab_pope"))
    # summary.json keeps each system's settings, and reads back.
    again = Summary.read(tmp_path / "report" / "summary.json")
    assert again.systems["hand-llava:png dtype=bfloat16"].full_settings()["dtype"] == "bfloat16"


@pytest.mark.slow  # a second or more: the fast tier stays under a minute
def test_check_matches_a_run_to_its_baseline_system_by_settings(tmp_path, capsys):
    f32, bf16 = two_dtypes(tmp_path)
    assert cli.main(["report", str(f32), "--out", str(tmp_path / "base"), "--seeds", "0"]) == 0
    baseline = tmp_path / "base" / "summary.json"
    # An old baseline (no settings) holds the default system: the float32 run is it, bfloat16 is not.
    data = json.loads(baseline.read_text())
    for system in data["systems"].values():
        system.pop("settings", None)
    baseline.write_text(json.dumps(data))
    capsys.readouterr()
    assert cli.main(["check", str(f32), str(bf16), "--baseline", str(baseline)]) == 0
    out = capsys.readouterr().out
    assert f"hand-llava:png dtype=bfloat16 / {POPE}: in the run, not in the baseline (not compared)" in out
    assert cli.main(["check", str(bf16), "--baseline", str(baseline)]) == 2
    out = capsys.readouterr().out
    assert ("the run's hand-llava:png dtype=bfloat16 differs in dtype: bfloat16 vs auto (run vs baseline)" in out), out
    # Matched by settings, not by name: a baseline system renamed still finds its run.
    data["systems"] = {"renamed": data["systems"]["hand-llava:png"]}
    baseline.write_text(json.dumps(data))
    assert cli.main(["check", str(f32), "--baseline", str(baseline)]) == 0
    assert f"hand-llava:png vs renamed  {TEXTVQA}" in capsys.readouterr().out


@pytest.mark.slow
def test_always_runs_that_differ_in_layer_are_two_systems_through_lmms_eval(tiny_llava_run, tmp_path, capsys):
    """Two always runs of the tiny LLaVA through lmms-eval's command line, one at layer=0 (the
    default run is the one other tests share; the layer=0 run adds one run of one task)."""
    default, layer0 = tiny_llava_run("policy=always"), tiny_llava_run("policy=always,layer=0", (POPE,))
    assert {r["settings"]["layer"] for r in layer0.records} == {0}
    summary = summarise(find_runs(default.out) + find_runs(layer0.out), seeds=0)
    labels = system_labels(summary)
    assert sorted(labels.values()) == ["tiny-llava layer=0", "tiny-llava layer=default"]
    assert cli.main(["report", str(default.out), "--out", str(tmp_path / "base"), "--seeds", "0"]) == 0
    capsys.readouterr()
    assert cli.main(["check", str(default.out), str(layer0.out), "--baseline", str(tmp_path / "base" /
                                                                                     "summary.json")]) == 0
    out = capsys.readouterr().out
    assert f"tiny-llava:png layer=0 / {POPE}: in the run, not in the baseline" in out


def test_keys_and_labels_name_only_what_differs():
    from collab_eval.systems import differing, system_key
    assert system_key("m", {}) == "m:png"  # a default run: the name summaries had before settings
    assert system_key("m", {"codec": "jpeg:90", "dtype": "float16", "layer": 3}) == "m:jpeg:90 layer=3 dtype=float16"
    assert system_key("m", {"score": "margin"}) == "m:png"  # a run setting, not the system's
    assert differing({"a": ("m1", {}), "b": ("m2", {"codec": "png", "dtype": "auto"})}) == {"a": "m1", "b": "m2"}
    assert differing({"a": ("m", {}), "b": ("m", {"codec": "webp:50"}), "c": ("n", {"locator": "grad_att"})}) == {
        "a": "m codec=png locator=rel_att", "b": "m codec=webp:50 locator=rel_att", "c": "n codec=png locator=grad_att"}
    assert differing({"x": ("m", {}), "x #2": ("m", {})}) == {"x": "m", "x #2": "m #2"}


def test_calibrate_refuses_always_runs_of_two_systems_that_differ_only_in_a_setting(tmp_path):
    from collab_eval.analysis.calibrate import always_records
    f32, bf16 = two_dtypes(tmp_path)
    with pytest.raises(ValueError, match=r"several systems \['hand-llava:png', 'hand-llava:png dtype=bfloat16'\]"):
        always_records(find_runs(f32) + find_runs(bf16), POPE, "here")
