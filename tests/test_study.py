"""collab-eval study (fast: no lmms-eval run) and costed-tasks' prompt overrides.

The study's dry runs of both shipped study files, a partial cell resumed, the file's checks,
the codec and savings tables computed from known curves, and TextVQA's OCR variant built by
costed-tasks from lmms-eval's own textvqa_val YAML, whose prompt lmms-eval's own task class
builds with the OCR tokens."""
from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

from collab_eval import study
from collab_eval.analysis.curves import Point
from collab_eval.analysis.summary import Curves, FromAlways, RunPoint, Summary, SystemSummary, TaskSummary
from collab_eval.cli import main
from collab_eval.costed_tasks import costed_name, override_suffix, parse_overrides, write_costed
from collab_eval.shipped import TASK_DATA_DIR, TASKS_DIR

LMMS_TASKS = Path(__import__("lmms_eval").__file__).parent / "tasks"


def dry_run(capsys, *args) -> list[list[str]]:
    assert main(["study", *args, "--dry-run"]) == 0
    return [shlex.split(line) for line in capsys.readouterr().out.splitlines() if line and not line.startswith("#")]


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def model_args(argv: list[str]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in option(argv, "--model_args").split(","))


def lmms_eval_task_names() -> set[str]:
    """Every ``task:`` name in lmms-eval's own task YAMLs (read as text: no TaskManager)."""
    names = set()
    for path in LMMS_TASKS.rglob("*.yaml"):
        names.update(m.strip().strip("\"'") for m in re.findall(r"^task:\s*(\S+)\s*$", path.read_text(errors="replace"),
                                                                 flags=re.M))
    return names


# ----- the shipped study files ----------------------------------------------------------------
def test_paper_dry_run_uses_only_lmms_evals_tasks_and_the_generated_variants(capsys, tmp_path):
    commands = dry_run(capsys, "paper", "--out", str(tmp_path / "paper"))
    costed = [c for c in commands if c[:2] == ["collab-eval", "costed-tasks"]]
    runs = [c for c in commands if c[0] == "lmms-eval"]
    # models x task sets x policies x codecs, and the HD baseline: never only, at every codec
    assert len(runs) == 3 * 2 * 4 * 5 + 2 * 1 * 5
    # The variants: textvqa_val with ocr=true, pope costed; both lmms-eval's own tasks.
    assert sorted((option(c, "--tasks"), c[c.index("--set") + 1] if "--set" in c else None) for c in costed) == \
        [("pope", None), ("textvqa_val", "ocr=true")]
    assert {"textvqa_val", "pope"} <= lmms_eval_task_names()
    assert {option(c, "--out") for c in costed} == {str(tmp_path / "paper" / "tasks")}
    assert {option(c, "--tasks") for c in runs} == {"collab_textvqa_val_ocr", "collab_pope"}
    assert {option(c, "--include_path") for c in runs} == {str(tmp_path / "paper" / "tasks")}
    assert {(option(c, "--model"), model_args(c)["pretrained"]) for c in runs} == {
        ("collab_llava", "llava-hf/llava-1.5-7b-hf"), ("collab_qwen2_vl", "Qwen/Qwen2-VL-7B-Instruct"),
        ("collab_instructblip", "Salesforce/instructblip-vicuna-7b"),
        ("collab_llava_next", "llava-hf/llava-v1.6-vicuna-7b-hf")}
    hd = [c for c in runs if option(c, "--model") == "collab_llava_next"]
    assert sorted((option(c, "--tasks"), model_args(c)["policy"], model_args(c)["codec"]) for c in hd) == sorted(
        (t, "never", c) for t in ("collab_textvqa_val_ocr", "collab_pope")
        for c in ("png", "jpeg:90", "jpeg:75", "jpeg:50", "jpeg:25"))
    assert option(hd[0], "--output_path") == str(tmp_path / "paper/cells/llava-next-7b-hd/textvqa_ocr/png/never")
    assert {model_args(c)["codec"] for c in runs} == {"png", "jpeg:90", "jpeg:75", "jpeg:50", "jpeg:25"}
    assert {model_args(c)["policy"] for c in runs} == {"always", "never", "tiles", "random"}
    random = next(c for c in runs if model_args(c)["policy"] == "random")
    assert (model_args(random)["rate"], model_args(random)["seed"]) == ("0.5", "0")
    first = runs[0]
    assert model_args(first)["records_dir"] == option(first, "--output_path") + "/records"
    assert option(first, "--output_path") == str(tmp_path / "paper/cells/llava-1.5-7b/textvqa_ocr/png/always")
    assert "--log_samples" in first and "resume" not in model_args(first)


def test_smalldetail_dry_run_names_the_shipped_checkpoints_and_tasks(capsys, tmp_path):
    runs = dry_run(capsys, "smalldetail", "--out", str(tmp_path), "--limit", "3")
    assert len(runs) == 3 * 1 * 2 * 3 + 3  # and the HD baseline: never at each codec
    assert {option(c, "--tasks") for c in runs} == {"smalldetail_read,smalldetail_exist"}
    assert {option(c, "--include_path") for c in runs} == {str(TASKS_DIR)}
    assert {option(c, "--limit") for c in runs} == {"3"}
    assert {model_args(c)["pretrained"] for c in runs} == {"smalldetail-llava", "smalldetail-qwen2-vl",
                                                           "smalldetail-instructblip", "smalldetail-llava-next"}
    gated = [c for c in runs if option(c, "--model") != "collab_llava_next"]
    assert {(model_args(c)["policy"], model_args(c)["codec"]) for c in gated} == {
        (p, c) for p in ("always", "tiles") for c in ("png", "jpeg:90", "jpeg:50")}
    hd = [c for c in runs if option(c, "--model") == "collab_llava_next"]
    assert [(model_args(c)["pretrained"], model_args(c)["policy"], model_args(c)["codec"]) for c in hd] == [
        ("smalldetail-llava-next", "never", c) for c in ("png", "jpeg:90", "jpeg:50")]


def test_a_model_with_its_own_policies_and_codecs_runs_only_those(capsys, tmp_path):
    # As a user writes it: a baseline model run with never only, at one codec of the study's two.
    (tmp_path / "s.yaml").write_text("""
name: baseline
models:
  - name: gated
    adapter: collab_llava
    checkpoint: smalldetail-llava
  - name: hd
    adapter: collab_llava_next
    checkpoint: tiny-llava-next
    policies: [never]
    codecs: ["jpeg:90"]
task_sets:
  - name: read
    tasks: [smalldetail_read]
policies: [always, {policy: random, args: {rate: 0.5}}]
codecs: [png, "jpeg:90"]
""")
    assert main(["study", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    listed = capsys.readouterr().out
    assert re.findall(r"^# (.*): new$", listed, flags=re.M) == [
        "gated / read / png / always", "gated / read / png / random-rate0.5",
        "gated / read / jpeg:90 / always", "gated / read / jpeg:90 / random-rate0.5", "hd / read / jpeg:90 / never"]
    runs = [shlex.split(line) for line in listed.splitlines() if line.startswith("lmms-eval")]
    assert [(option(c, "--model"), model_args(c)["policy"], model_args(c)["codec"]) for c in runs][-1] == \
        ("collab_llava_next", "never", "jpeg:90")
    assert option(runs[-1], "--output_path") == str(tmp_path / "out/cells/hd/read/jpeg90/never")


def test_a_partial_cell_is_resumed_and_accelerate_launches_the_cells(capsys, tmp_path):
    spec = study.load_study("smalldetail")
    cell = study.cells(spec, tmp_path.resolve())[4]
    cell.records_dir.mkdir(parents=True)
    (cell.records_dir / "collab_llava-20261203T000000.000000Z-00000000.rank0.jsonl").write_text('{"task": "x"')
    runs = dry_run(capsys, "smalldetail", "--out", str(tmp_path), "--launcher", "accelerate", "--num-processes", "4")
    assert all(c[:9] == ["accelerate", "launch", "--multi_gpu", "--num_processes", "4", "--num_machines", "1", "-m",
                         "lmms_eval"] for c in runs)
    resumed = [c for c in runs if model_args(c).get("resume") == "true"]
    assert [option(c, "--output_path") for c in resumed] == [str(cell.folder)]


def test_a_relative_include_path_is_relative_to_the_study_file(capsys, tmp_path):
    data = yaml.safe_load((study.STUDIES_DIR / "smalldetail.yaml").read_text())
    data["task_sets"][0]["include_path"] = "my_tasks"
    (tmp_path / "studies" / "my_tasks").mkdir(parents=True)  # the study's start checks its tasks are there
    for task_yaml in TASKS_DIR.glob("*.yaml"):
        (tmp_path / "studies" / "my_tasks" / task_yaml.name).write_text(task_yaml.read_text())
    (tmp_path / "studies" / "s.yaml").write_text(yaml.safe_dump(data))
    runs = dry_run(capsys, str(tmp_path / "studies" / "s.yaml"), "--out", str(tmp_path / "out"))
    assert {option(c, "--include_path") for c in runs} == {str(tmp_path.resolve() / "studies" / "my_tasks")}


def test_a_cell_started_with_other_arguments_is_refused(capsys, tmp_path):
    spec = study.load_study("smalldetail")
    cell = study.cells(spec, tmp_path.resolve())[0]
    study.write_manifest(cell, study.lmms_eval_args(cell, tmp_path.resolve(), limit=2, resume=False))
    # Nothing recorded yet (it failed before its first sample, say for a typo since fixed): it runs
    # with the arguments of now (issue 34: refusing it made a fixed study unrunnable but by hand).
    assert main(["study", "smalldetail", "--out", str(tmp_path), "--dry-run"]) == 0
    assert f"# {cell.label}: new" in capsys.readouterr().out
    # With records of the other arguments, it would mix two runs: refused.
    cell.records_dir.mkdir(parents=True)
    (cell.records_dir / "collab_llava-20261203T000000.000000Z-00000000.rank0.jsonl").write_text('{"task": "x"}\n')
    assert main(["study", "smalldetail", "--out", str(tmp_path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert str(cell.folder) in err and "--limit 2" in err and "another --out" in err
    assert main(["study", "smalldetail", "--out", str(tmp_path), "--dry-run", "--limit", "2"]) == 0


def test_a_cell_manifest_names_the_shipped_tasks_folder_not_where_it_is_installed(capsys, tmp_path):
    # A complete cell stays complete after a new venv or an upgrade moves the shipped tasks.
    spec = study.load_study("smalldetail")
    cell = study.cells(spec, tmp_path.resolve())[0]
    args = study.lmms_eval_args(cell, tmp_path.resolve(), limit=None, resume=False)
    assert option(args, "--include_path") == str(TASKS_DIR)
    study.write_manifest(cell, args)
    kept = json.loads(study.manifest_path(cell).read_text())["lmms_eval_args"]
    assert option(kept, "--include_path") == "$(collab-eval tasks-dir)" and str(TASKS_DIR) not in kept
    assert main(["study", "smalldetail", "--out", str(tmp_path), "--dry-run"]) == 0


@pytest.mark.parametrize("change, message", [
    ({"codecs": ["png", "jpeg:0"]}, "codecs"),
    ({"policies": ["always", "always"]}, "policy names must be unique; repeated: always"),
    ({"models": [{"name": "m", "adapter": "collab_llava", "checkpoint": "x", "model_args": {"codec": "png"}}]},
     "model_args may not set codec"),
    ({"lmms_eval_args": ["--limit", "3"]}, "lmms_eval_args may not hold --limit"),
    ({"task_sets": [{"name": "s", "tasks": ["a"], "colour": 1}]}, "task_sets.0.colour"),
])
def test_a_bad_study_file_names_the_file_and_the_field(tmp_path, capsys, change, message):
    data = yaml.safe_load((study.STUDIES_DIR / "smalldetail.yaml").read_text()) | change
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["study", str(path), "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"collab-eval study: error: {path}: not a study file") and message in err
    assert main(["study", "no-such-study", "--out", str(tmp_path), "--dry-run"]) == 2
    assert "not a shipped study (paper, smalldetail)" in capsys.readouterr().err


# ----- costed-tasks --set ---------------------------------------------------------------------
def test_override_values_and_names():
    assert parse_overrides(["ocr=true", "post_prompt=Answer briefly.", "n=3"]) == {
        "ocr": True, "post_prompt": "Answer briefly.", "n": 3}
    assert costed_name("textvqa_val", {"ocr": True}) == "collab_textvqa_val_ocr"
    assert override_suffix({"ocr": False, "post_prompt": "Say: yes/no"}) == "_no_ocr_post_prompt-Say-yes-no"
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        parse_overrides(["ocr"])


@pytest.fixture
def replica_textvqa(tmp_path) -> Path:
    """lmms-eval's own textvqa_val YAML (its prompt, scoring, ocr: false) on the shipped local
    TextVQA fixture."""
    path = tmp_path / "replica" / "replica_textvqa_val.yaml"
    path.parent.mkdir()
    path.write_text(f"include: {LMMS_TASKS / 'textvqa' / 'textvqa_val.yaml'}\ntask: replica_textvqa_val\n"
                    f"dataset_path: parquet\ndataset_kwargs:\n  data_files:\n"
                    f"    validation: {TASK_DATA_DIR / 'textvqa_mini.parquet'}\n")
    return path


def prompts(yaml_path: Path) -> list[tuple[str, list[str]]]:
    """Each document's prompt as lmms-eval's own task class builds it for a collab adapter."""
    from lmms_eval.api.task import ConfigurableTask
    from lmms_eval.utils import load_yaml_config
    sys.path.insert(0, str(yaml_path.parent))  # the generated !function module, as lmms-eval's loader finds it
    try:
        task = ConfigurableTask(config=load_yaml_config(str(yaml_path), mode="full"), model_name="collab_llava")
    finally:
        sys.path.remove(str(yaml_path.parent))
    return [(task.doc_to_text(doc), list(doc["ocr_tokens"])) for doc in task.test_docs()]


def test_the_ocr_variant_puts_the_ocr_tokens_in_lmms_evals_own_prompt(replica_textvqa, tmp_path):
    out = tmp_path / "costed"
    out.mkdir()
    write_costed(replica_textvqa, costed_name("replica_textvqa_val", {"ocr": True}), out, overrides={"ocr": True})
    write_costed(replica_textvqa, "collab_replica_textvqa_val", out)
    generated = yaml.safe_load((out / "collab_replica_textvqa_val_ocr.yaml").read_text().replace("!function", ""))
    assert generated["lmms_eval_specific_kwargs"]["default"]["ocr"] is True
    assert generated["lmms_eval_specific_kwargs"]["qwen_vl"] == {"pre_prompt": "", "post_prompt": " Answer:"}
    with_ocr = prompts(out / "collab_replica_textvqa_val_ocr.yaml")
    plain = prompts(out / "collab_replica_textvqa_val.yaml")
    assert len(with_ocr) == len(plain) == 16
    for (prompt, tokens), (plain_prompt, _) in zip(with_ocr, plain):
        assert tokens and f"\nReference OCR token: {', '.join(tokens)}\n" in prompt
        assert "Reference OCR token" not in plain_prompt
        assert prompt == plain_prompt.replace("\nAnswer", f"\nReference OCR token: {', '.join(tokens)}\nAnswer", 1)


def test_an_override_the_prompt_does_not_read_is_refused(replica_textvqa, tmp_path):
    with pytest.raises(ValueError, match=r"lmms_eval_specific_kwargs.default has no colour \(it has pre_prompt, "
                                         r"post_prompt, ocr\)"):
        write_costed(replica_textvqa, "collab_x", tmp_path, overrides={"colour": "red"})


# ----- the codec figure's numbers ---------------------------------------------------------------
def entry(always_acc: float, always_bytes: float, gated: list[tuple[float, float]], tiles=None) -> TaskSummary:
    """A task of one system: never is the gate's first point, always its last."""
    points = [Point(accuracy=a, bytes=b, flops=b * 1e6, rate=i / (len(gated) - 1), tau=1.0 - i)
              for i, (a, b) in enumerate(gated)]
    f = FromAlways(n=10, never=points[0], always=points[-1], oracle=points[-1],
                   curves=Curves(gated=points, random=points, oracle=points),
                   reach_target=dict.fromkeys(("gated", "random", "oracle")))
    assert (f.always.accuracy, f.always.bytes) == (always_acc, always_bytes)
    extra = [RunPoint(label="tiles", run="r", policy="tiles", n=10, point=tiles)] if tiles else []
    return TaskSummary(metric="exact_match", from_always=f, points=extra)


@pytest.mark.slow  # a second or more: the fast tier stays under a minute
def test_codec_and_gate_savings_against_the_lossless_always_run(tmp_path):
    png = entry(0.80, 1000, [(0.60, 400), (0.79, 600), (0.80, 1000)])
    jpeg = entry(0.80, 500, [(0.60, 150), (0.792, 250), (0.80, 500)],
                 tiles=Point(accuracy=0.7, bytes=2000, flops=1, rate=0))
    worse = entry(0.70, 200, [(0.50, 80), (0.70, 200)])
    summary = Summary(systems={
        f"m:{codec}": SystemSummary(checkpoint="m", codec=codec, tasks={"t": e})
        for codec, e in (("png", png), ("jpeg:50", jpeg), ("jpeg:10", worse))})
    results = {r.codec: r for r in study_figures_combined(summary)}
    assert list(results) == ["png", "jpeg:50", "jpeg:10"]
    assert results["png"].target_accuracy == pytest.approx(0.792)
    # png alone: the gate's cheapest point at >= 79.2% is the always run itself (0.79 < 0.792).
    assert results["png"].gate.bytes == 1000 and results["png"].gate_saving == pytest.approx(0.0)
    # jpeg:50 halves always's bytes; its gate reaches 79.2% at 250 bytes: 75% fewer than png always.
    assert results["jpeg:50"].codec_saving == pytest.approx(0.5)
    assert results["jpeg:50"].gate_saving == pytest.approx(0.75)
    assert results["jpeg:50"].gate_flops_saving == pytest.approx(0.75)
    assert results["jpeg:10"].gate is None and results["jpeg:10"].codec_accuracy_change == pytest.approx(-0.1)
    from collab_eval.analysis import study_figures
    assert study_figures.independent(0.5, 0.2) == pytest.approx(0.6)
    from collab_eval.analysis.report import write
    write(summary, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert (tmp_path / "t_codecs.png").stat().st_size > 10_000
    assert "| t | m | jpeg:50 | 80.0 / 500 | +50.0% | +0.0 | τ=0 / 50.0% / 79.2 / 250 | +75.0% | +75.0% | +50.0% |" \
        in md, md[md.index("Each codec"):]
    assert "| t | m | 80.0 / 1,000 | +0.0% / +0.0% | jpeg:50: +75.0% / +75.0% |" in md


def study_figures_combined(summary: Summary):
    from collab_eval.analysis import study_figures
    (runs,) = study_figures.by_checkpoint(summary).values()
    return study_figures.combined(runs, summary.settings.target_fraction)


def test_a_report_of_one_codec_has_no_codec_section(tmp_path):
    from collab_eval.analysis import study_figures
    summary = Summary(systems={"m:png": SystemSummary(checkpoint="m", codec="png", tasks={
        "t": entry(0.8, 1000, [(0.6, 400), (0.8, 1000)])})})
    assert study_figures.sections(summary) == []
    assert json.loads(json.dumps(summary.to_json()))["systems"]["m:png"]["codec"] == "png"
