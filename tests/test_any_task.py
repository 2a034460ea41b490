"""Standard lmms-eval tasks, costed: small replicas of seedbench (a list column holding the
image), muirbench (2-4 images per document) and docvqa_val (lmms-eval's built-in anls, no
process_results). Each replica is lmms-eval's own YAML (``include``d from the installed
package, so its own prompts and scoring functions) over a small parquet in the real schema
with awkward images, run through the lmms-eval CLI under the replica's own name and as a
costed variant."""
import os
import statistics

import pytest
from datasets import Dataset, Features, Sequence, Value
from datasets import Image as ImageFeature
from PIL import Image

from collab_eval.cost_handoff import COST_METRICS, cost_means
from collab_eval.costed_tasks import CostedTask, write_costed
from collab_eval.edge import Codec, sanitize, send
from tests.helpers import records, results_json, run_lmms_eval

LIMIT = 4


def lmms_task_yaml(*parts: str) -> str:
    import lmms_eval
    return os.path.join(os.path.dirname(lmms_eval.__file__), "tasks", *parts)


def awkward_images() -> list[Image.Image]:
    """Tiny, very wide, very tall, transparent, grey, palette: every one a real decode path."""
    wide = Image.linear_gradient("L").resize((640, 40)).convert("RGB")
    tall = Image.new("RGB", (30, 300), (20, 120, 200))
    rgba = Image.new("RGBA", (90, 70), (255, 0, 0, 80))
    grey = Image.linear_gradient("L").resize((120, 90))
    palette = Image.new("RGB", (64, 48), (0, 200, 0)).convert("P")
    return [Image.new("RGB", (50, 50), "white"), wide, tall, rgba, grey, palette]


def write_replica(tasks_dir, name: str, original: str, rows: list[dict], features: Features, split: str,
                  extra: str = "") -> None:
    Dataset.from_list(rows, features=features).to_parquet(tasks_dir / f"{name}.parquet")
    (tasks_dir / f"{name}.yaml").write_text(
        f"include: {original}\ntask: {name}\ndataset_path: parquet\n"
        f"dataset_kwargs:\n  data_files:\n    {split}: {name}.parquet\n{extra}")


def build_replicas(tasks_dir) -> dict[str, list[list[Image.Image]]]:
    """Write the three replicas; return each one's images per document."""
    images = awkward_images()
    seed_docs = [[images[i]] for i in range(LIMIT)]
    write_replica(tasks_dir, "replica_seedbench", lmms_task_yaml("seedbench", "seedbench.yaml"), [
        {"question": f"what is shown in picture {i}?", "answer": "ABCD"[i % 4], "choice_a": "a", "choice_b": "b",
         "choice_c": "c", "choice_d": "d", "data_type": "image", "question_id": str(i), "data_id": str(i),
         "image": doc} for i, doc in enumerate(seed_docs)],
        Features({"question": Value("string"), "answer": Value("string"), "choice_a": Value("string"),
                  "choice_b": Value("string"), "choice_c": Value("string"), "choice_d": Value("string"),
                  "data_type": Value("string"), "question_id": Value("string"), "data_id": Value("string"),
                  "image": Sequence(ImageFeature())}), "test")
    # 2, 3, 4 images, then a document whose image list is empty (fails its own sample).
    muir_docs = [images[:2], images[1:4], images[2:6], []]
    write_replica(tasks_dir, "replica_muirbench", lmms_task_yaml("muirbench", "muirbench.yaml"), [
        {"idx": str(i), "task": "Counting", "image_relation": "Independent", "image_type": "Photo",
         "question": f"which image is widest? <image> ({i})", "options": ["first", "second", "third"],
         "answer": "A", "image_list": doc} for i, doc in enumerate(muir_docs)],
        Features({"idx": Value("string"), "task": Value("string"), "image_relation": Value("string"),
                  "image_type": Value("string"), "question": Value("string"), "options": Sequence(Value("string")),
                  "answer": Value("string"), "image_list": Sequence(ImageFeature())}), "test")
    doc_docs = [[images[i + 1]] for i in range(LIMIT)]
    write_replica(tasks_dir, "replica_docvqa_val", lmms_task_yaml("docvqa", "docvqa_val.yaml"), [
        {"questionId": str(i), "question": f"what is the total on page {i}?", "answers": ["12.50", "$12.50"],
         "image": doc[0], "docId": i} for i, doc in enumerate(doc_docs)],
        Features({"questionId": Value("string"), "question": Value("string"), "answers": Sequence(Value("string")),
                  "image": ImageFeature(), "docId": Value("int64")}), "validation", extra="dataset_name: null\n")
    for name in ("replica_muirbench", "replica_docvqa_val"):
        write_costed(tasks_dir / f"{name}.yaml", f"collab_{name}", tasks_dir)
    return {"replica_seedbench": seed_docs, "replica_muirbench": muir_docs, "replica_docvqa_val": doc_docs}


def test_costed_task_files_import_costed_tasks_and_older_ones_still_load(tmp_path):
    """write_costed's Python file imports collab_eval.costed_tasks; one written before that module's
    rename imports collab_eval.task_functions, which still gives the same CostedTask."""
    import runpy
    write_costed(lmms_task_yaml("pope", "pope.yaml"), "collab_check", tmp_path)
    new = tmp_path / "collab_check.py"
    assert "from collab_eval.costed_tasks import CostedTask\n" in new.read_text()
    old = tmp_path / "collab_old.py"
    old.write_text(new.read_text().replace("collab_eval.costed_tasks", "collab_eval.task_functions"))
    for path in (new, old):
        task = runpy.run_path(str(path))["task"]
        assert isinstance(task, CostedTask) and task.name == "collab_check"


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_llava_path):
    root = tmp_path_factory.mktemp("any_task")
    tasks_dir = root / "tasks"
    tasks_dir.mkdir()
    docs = build_replicas(tasks_dir)
    out = root / "out"
    names = "replica_seedbench,replica_muirbench,replica_docvqa_val,collab_replica_muirbench,collab_replica_docvqa_val"
    proc = run_lmms_eval("collab_llava", f"pretrained={tiny_llava_path},policy=always,records_dir={out / 'records'}",
                         names, out, include_path=tasks_dir, extra=("--limit", str(LIMIT)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return results_json(out), records(out / "records"), docs, proc.stdout + proc.stderr, out


def record_means(recs: list[dict], task: str) -> dict[str, float]:
    mine = [r for r in recs if r["task"] == task]
    assert len(mine) == LIMIT, (task, len(mine))
    return {name: statistics.mean(float(r[name]) for r in mine) for name in COST_METRICS}


@pytest.mark.slow
def test_every_task_has_its_cost_means_in_results_json(run):
    results, recs, _, log, _ = run
    means = cost_means(results)
    for task in ("replica_seedbench", "replica_muirbench", "replica_docvqa_val",
                 "collab_replica_muirbench", "collab_replica_docvqa_val"):
        expected = record_means(recs, task)
        assert means[task]["samples"] == LIMIT
        assert {k: means[task][k] for k in COST_METRICS} == pytest.approx(expected), task
        if task.startswith("collab_"):  # a costed variant: beside the task's own metric, in its results
            # metric keys carry the task's filter: "bytes_total,none", ",flexible-extract"
            row = results["results"][task]
            assert {k: next(v for key, v in row.items() if key.startswith(f"{k},") and "stderr" not in key)
                    for k in COST_METRICS} == pytest.approx(expected), task
    assert 0.0 <= results["results"]["collab_replica_docvqa_val"]["anls,none"] <= 1.0  # lmms-eval's built-in metric
    assert "muirbench_score_overall,flexible-extract" in results["results"]["collab_replica_muirbench"]
    assert "collab costs per task" in log


@pytest.mark.slow
def test_every_image_of_a_document_is_sent_and_counted(run, tiny_llava_path):
    from transformers import AutoProcessor

    _, recs, docs, _, _ = run
    ip = AutoProcessor.from_pretrained(tiny_llava_path).image_processor
    from lmms_eval.tasks.muirbench.utils import muir_doc_to_visual
    from lmms_eval.tasks.seedbench.utils import seed_doc_to_visual
    visuals = {"replica_muirbench": lambda ims: muir_doc_to_visual({"image_list": ims}),
               "replica_seedbench": lambda ims: seed_doc_to_visual({"image": ims})}
    for task in ("replica_muirbench", "replica_seedbench"):
        for r in (r for r in recs if r["task"] == task and not r["error"]):
            # what the task's own function gives
            images = [sanitize(im) for im in visuals[task](docs[task][r["doc_id"]])]
            # the processor's own resize and crop of each, in 8 bits (Server.global_view), as PNG
            views = [ip(images=[im], do_rescale=False, do_normalize=False, return_tensors="pt")["pixel_values"][0]
                     for im in images]
            payloads = [send(Image.fromarray(v.permute(1, 2, 0).numpy()), Codec.parse("png")).nbytes for v in views]
            assert r["bytes_global_images"] == payloads, (task, r["doc_id"])
            assert r["bytes_global"] == sum(payloads)
            assert r["image_sizes"] == [list(im.size) for im in images]
            assert 0 <= r["roi_image"] < len(images)
            x0, y0, x1, y1 = r["roi"]
            width, height = r["image_sizes"][r["roi_image"]]
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height  # cropped from the image it points to
            assert r["image_size"] == [width, height]
            assert "image" not in r["doc"] and "image_list" not in r["doc"]  # no media in records


@pytest.mark.slow
def test_a_document_without_images_fails_alone(run):
    _, recs, _, _, _ = run
    muir = {r["doc_id"]: r for r in recs if r["task"] == "replica_muirbench"}
    assert "no image" in muir[3]["error"] and muir[3]["bytes_total"] == 0
    assert [muir[i]["error"] for i in range(3)] == [None] * 3  # their "<image>" placeholders are no images
    assert [len(muir[i]["bytes_global_images"]) for i in range(3)] == [2, 3, 4]



@pytest.mark.slow
def test_one_report_over_every_task_scores_each_with_its_own_metric(run, tmp_path):
    """`collab-eval report` on the run reads every task back (lmms-eval's own YAMLs, found through
    the run's --include_path) and rescores both stages' answers with each task's own metric:
    seedbench's and muirbench's dict-valued scores, docvqa's built-in anls."""
    import json
    import subprocess
    import sys
    from pathlib import Path
    results, recs, _, _, out = run
    cli = str(Path(sys.executable).with_name("collab-eval"))
    proc = subprocess.run([cli, "report", str(out), "--out", str(tmp_path / "report"), "--seeds", "0"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tasks = json.loads((tmp_path / "report" / "summary.json").read_text())["systems"]
    (system,) = tasks.values()
    names = ("replica_seedbench", "replica_muirbench", "replica_docvqa_val",
             "collab_replica_muirbench", "collab_replica_docvqa_val")
    assert set(system["tasks"]) == set(names)
    for task in names:
        entry = system["tasks"][task]
        assert entry["n"] == LIMIT and entry["errors"] == (1 if task.endswith("muirbench") else 0), task
        assert entry["metric"] in ("seed_image", "seed_all", "muirbench_score_overall", "anls"), (task, entry["metric"])
    # The always end is stage 2's answers scored again: lmms-eval's own anls for the run.
    assert system["tasks"]["replica_docvqa_val"]["always"]["accuracy"] == pytest.approx(
        results["results"]["replica_docvqa_val"]["anls,none"])
