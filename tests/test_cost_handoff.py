"""The cost hand-off and costed tasks, without a model: keys, wrapping, media stripping."""
import json
import math
import os

import numpy as np
import pytest
from datasets import Dataset, Features, Sequence, Value
from datasets import Image as ImageFeature
from PIL import Image

from collab_eval import cost_handoff
from collab_eval.costed_tasks import CostedTask
from collab_eval.pipeline import images_in
from collab_eval.records import SampleRecord, strip_media
from collab_eval.shipped import TASKS_DIR
from model_adapters.task_documents import without_media

TEXTVQA = TASKS_DIR / "_textvqa_template_yaml"


def textvqa_docs(n_same: int = 2) -> Dataset:
    """``n_same`` documents with identical content, question_id included."""
    return Dataset.from_list([{"question_id": 7, "question": "what is written?", "answers": ["stop"] * 10}] * n_same)


def costs(task: str, nbytes: float) -> cost_handoff.SampleCosts:
    return cost_handoff.SampleCosts(task, bytes_total=nbytes, flops_total=10 * nbytes,
                                    retransmitted=float(nbytes > 150))


def test_identical_documents_keep_their_own_costs():
    """Two docs with the same content under different doc ids: each is scored with the
    costs the adapter handed over for its own (task, split, doc_id)."""
    task = CostedTask(TEXTVQA, name="keys_same_content", split="validation")
    docs = task.process_docs(textvqa_docs())
    for doc_id, nbytes in enumerate((100.0, 200.0)):
        cost_handoff.remember(cost_handoff.sample_key("keys_same_content", "validation", doc_id),
                              costs("keys_same_content", nbytes))
    scored = [task.process_results(docs[i], ["stop"]) for i in range(2)]
    assert [s["bytes_total"] for s in scored] == [100.0, 200.0]
    assert [s["flops_total"] for s in scored] == [1000.0, 2000.0]
    assert [s["retransmitted"] for s in scored] == [0.0, 1.0]
    assert all(s["exact_match"] == 1.0 for s in scored)  # lmms-eval's own TextVQA scoring still runs


def test_two_tasks_over_the_same_documents_keep_their_costs_apart():
    plain = CostedTask(TEXTVQA, name="keys_plain", split="validation")
    ocr = CostedTask(TEXTVQA, name="keys_ocr", split="validation")
    cost_handoff.remember(cost_handoff.sample_key("keys_plain", "validation", 0), costs("keys_plain", 111.0))
    cost_handoff.remember(cost_handoff.sample_key("keys_ocr", "validation", 0), costs("keys_ocr", 222.0))
    assert plain.process_results(plain.process_docs(textvqa_docs(1))[0], ["x"])["bytes_total"] == 111.0
    assert ocr.process_results(ocr.process_docs(textvqa_docs(1))[0], ["x"])["bytes_total"] == 222.0


def test_a_sample_no_collab_adapter_answered_has_nan_costs():
    """Another model ran the costed task, or the report rescores a stored document: the
    task's own scores stand, the costs are NaN."""
    task = CostedTask(TEXTVQA, name="keys_unanswered", split="validation")
    scored = task.process_results(task.process_docs(textvqa_docs(1))[0], ["stop"])
    assert scored["exact_match"] == 1.0 and math.isnan(scored["bytes_total"])
    assert all(math.isnan(v) for v in cost_handoff.lookup({"question_id": 7, "question": "q"}).values())


def test_costed_metric_list_is_the_originals_plus_the_costs():
    task = CostedTask(TEXTVQA, name="keys_metrics", split="validation")
    assert [m["metric"] for m in task.metric_list] == ["exact_match", *cost_handoff.COST_METRICS]
    assert all(m["higher_is_better"] is False for m in task.metric_list[1:])


def test_a_task_scored_by_builtin_metrics_keeps_them():
    """lmms-eval's own docvqa_val has no process_results (anls from its metric_list)."""
    import lmms_eval
    original = os.path.join(os.path.dirname(lmms_eval.__file__), "tasks", "docvqa", "docvqa_val.yaml")
    task = CostedTask(original, name="keys_docvqa")
    assert task.split == "validation"
    docs = task.process_docs(Dataset.from_list([{"question": "total?", "answers": ["$12.50", "12.50"]}]))
    cost_handoff.remember(cost_handoff.sample_key("keys_docvqa", "validation", 0), costs("keys_docvqa", 300.0))
    assert task.process_results(docs[0], ["12.50"]) == pytest.approx(
        {"anls": 1.0, "bytes_total": 300.0, "flops_total": 3000.0, "retransmitted": 1.0})
    assert task.process_results(docs[0], ["something else entirely"])["anls"] == 0.0


def test_published_means_are_read_back_per_task_once_per_key():
    """The run-wide place in results.json: lmms-eval's throughput summary of what
    publish logged, read back by cost_means. A key answered twice (rank padding) counts once."""
    from lmms_eval.models.model_utils.gen_metrics import reset_logged_metrics, summarize_logged_metrics
    reset_logged_metrics()
    keys = []
    for task, values in (("pub_a", (100.0, 300.0)), ("pub_b", (50.0,))):
        for doc_id, nbytes in enumerate(values):
            keys.append(cost_handoff.sample_key(task, "test", doc_id))
            cost_handoff.remember(keys[-1], costs(task, nbytes))
    means = cost_handoff.publish(keys + keys[:1], world_size=1, rank=0, elapsed=2.0, generated_tokens=8)
    read = cost_handoff.cost_means({"throughput": summarize_logged_metrics()})
    assert read == means
    assert read["pub_a"] == {"samples": 2, "bytes_total": 200.0, "flops_total": 2000.0, "retransmitted": 0.5}
    assert read["pub_b"]["bytes_total"] == 50.0 and read["pub_b"]["retransmitted"] == 0.0


# ---- media never reaches a record ------------------------------------------------
def test_records_hold_no_media_at_any_depth():
    image = Image.new("RGB", (4, 3), "red")
    doc = {"question": "q", "answer": "A", "image_list": [image, image], "meta": {"thumb": image, "ok": [1, None]},
           "encoded": {"bytes": b"\x89PNG", "path": None}, "audio": {"array": np.zeros(4), "sampling_rate": 16000},
           "pixels": np.zeros((2, 2)), "raw": b"abc", "nested": [[image], {"deep": [image, "keep"]}]}
    plain = strip_media(doc)
    assert plain == {"question": "q", "answer": "A", "image_list": [], "meta": {"ok": [1, None]},
                     "nested": [[], {"deep": ["keep"]}]}
    record = SampleRecord(task="t", doc_id=0, question="q", model="m", codec="png", policy="always", doc=plain)
    assert json.loads(record.to_json())["doc"] == plain


def test_without_media_drops_nested_image_columns_before_decoding():
    features = Features({"question": Value("string"), "image": Sequence(ImageFeature()),
                         "pair": {"left": ImageFeature(), "label": Value("string")}})
    png = {"bytes": _png(), "path": None}
    docs = Dataset.from_list([{"question": "q", "image": [png], "pair": {"left": png, "label": "x"}}],
                             features=features)
    assert without_media(docs).column_names == ["question"]


def _png() -> bytes:
    import io
    buf = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buf, "PNG")
    return buf.getvalue()


# ---- what a task's doc_to_visual gives ---------------------------------------------
def test_images_in_flattens_lists_and_refuses_what_is_not_an_image():
    a, b = Image.new("RGB", (2, 2)), Image.new("RGB", (3, 3))
    assert images_in([a, [b]]) == [a, b]
    with pytest.raises(ValueError, match="no image"):
        images_in([])
    with pytest.raises(ValueError, match="no image"):
        images_in([[], None])
    with pytest.raises(ValueError, match="video is out of scope"):
        images_in(["/data/clip.mp4"])
    with pytest.raises(ValueError, match="audio is out of scope"):
        images_in([{"array": np.zeros(10), "sampling_rate": 16000}])


@pytest.mark.slow  # indexes every lmms-eval task twice: 30-90 s on a shared CPU
def test_costed_tasks_cover_a_group_and_include_the_original(tmp_path):
    """`collab-eval costed-tasks --tasks textvqa,pope`: lmms-eval's textvqa group becomes a
    group of costed tasks, each YAML including lmms-eval's own YAML of its task."""
    import yaml

    from collab_eval.cli import main
    assert main(["costed-tasks", "--tasks", "textvqa,pope", "--out", str(tmp_path)]) == 0
    group = yaml.safe_load((tmp_path / "collab_textvqa.yaml").read_text())
    assert group == {"group": "collab_textvqa", "task": ["collab_textvqa_val", "collab_textvqa_test"]}
    text = (tmp_path / "collab_pope.yaml").read_text()
    assert "task: collab_pope\n" in text and text.split("include: ")[1].split("\n")[0].endswith("tasks/pope/pope.yaml")
    assert main(["costed-tasks", "--tasks", "no_such_task", "--out", str(tmp_path)]) == 2
