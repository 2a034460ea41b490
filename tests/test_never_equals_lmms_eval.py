"""policy=never,codec=png answers as lmms-eval's own adapter does (docs/families.md, "policy=never
against lmms-eval's own adapters").

The edge makes the global image with the processor's own resize and crop (Server.global_view),
so the processor, given the PNG, changes nothing: the model sees what its processor makes of the
original, for any size and mode. Fast: that equality of pixel values, per family. Slow: both
lmms-eval command lines on a small task of square and non-square images in several modes, the
generated answers compared sample by sample, per family whose lmms-eval adapter sees the same
pixels (lmms-eval's qwen2_vl re-encodes every image as JPEG at quality 85 first, and LLaVA-NeXT's
edge sends the pinpoint fit, not the original: compared in docs/families.md, not here).
"""
import numpy as np
import pytest
import torch
from PIL import Image

from collab_eval import families
from collab_eval.edge import Codec, sanitize, send
from tests.helpers import FAMILIES, Spec, evaluate_many, samples

SIZES = [(64, 64), (300, 300), (400, 200), (123, 457), (97, 96)]  # (w, h)
MODES = ["RGB", "RGBA", "L", "P", "CMYK", "LA"]


def image(size, mode, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    rgb = np.zeros((h, w, 3), dtype=np.uint8)
    rgb[:] = rng.integers(0, 255, 3)
    rgb[h // 4: h // 2, w // 3: 2 * w // 3] = rng.integers(0, 255, 3)  # a block off centre
    rgb += rng.integers(0, 40, (h, w, 3), dtype=np.uint8)
    picture = Image.fromarray(rgb)
    if mode in ("RGBA", "LA"):
        alpha = Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8))
        picture = picture.convert(mode[:-1])
        picture.putalpha(alpha)
        return picture
    return picture.convert(mode)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.slow  # a second or more: the fast tier stays under a minute
def test_the_processor_changes_nothing_the_edge_sent(family, tiny_server):
    """The pixel values the model gets from the PNG the edge sent equal those its processor
    makes of the original itself, for square and non-square originals in every mode. A family
    that sends each image at its own fit (``sends == "fit"``, LLaVA-NeXT's pinpoint fit, never
    upsampled): equal where the original is under its fit (the original itself is sent); above
    it, the processor lays the fit out as it lays out the original (the same pinpoint: as many
    views), its pixels made from the fit (docs/families.md)."""
    server = tiny_server(family)
    above_fit = 0
    for size in SIZES:
        for mode in MODES:
            original = image(size, mode, seed=len(mode) + size[0])
            view = server.global_view(sanitize(original))
            whole = (0.0, 0.0, float(size[0]), float(size[1]))
            assert view.size == server.frame(whole)[1], (size, mode)
            sent = send(view, Codec("png")).image
            own = server.inputs([original], "what is it")["pixel_values"]
            got = server.inputs([sent], "what is it")["pixel_values"]
            if server.sends == "fit" and view.size != original.size:
                above_fit += 1
                assert own.shape == got.shape, (family, size, mode, own.shape, got.shape)
                continue
            assert torch.equal(own, got), (family, size, mode, float((own - got).abs().max()))
    if server.sends == "fit":  # both cases seen: originals under the fit and above it
        assert 0 < above_fit < len(SIZES) * len(MODES), above_fit


# ----- through both command lines ----------------------------------------------------------------
TASK = "never_vs_lmms_eval"
# Pixel noise, square and not, in several modes: answers of the tiny LLaVA that move with a grey
# level (the edge's former crop-then-resize changed 3 of these 12 on it; InstructBLIP's tiny
# checkpoint answers the same either way, so its run checks what the adapter returns).
SHAPES = [(640, 160), (130, 700), (333, 517), (400, 200), (250, 250), (97, 96)]
MODES_SENT = ["RGB", "RGBA", "L", "P", "CMYK", "LA"]
DOCS = [(SHAPES[i % len(SHAPES)], MODES_SENT[i % 4 if i < 8 else 4 + i % 2]) for i in range(12)]
TASK_MODULE = '''
def doc_to_visual(doc):
    return [doc["image"]]  # as stored: the mode too (no convert), as a user's task may give it


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]
'''
TASK_YAML = """task: {task}
dataset_path: parquet
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function {task}.doc_to_visual
doc_to_text: !function {task}.doc_to_text
doc_to_target: "answer"
generation_kwargs:
  max_new_tokens: 6
  temperature: 0
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


QUESTIONS = ["What is in the image?", "Which colour is the block?", "Is there a block on the left?"]


def write_task(directory, questions):
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = [{"image": Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).convert(mode),
             "question": questions[i % len(questions)], "answer": "block"} for i, ((w, h), mode) in enumerate(DOCS)]
    data = directory / f"{TASK}.parquet"
    Dataset.from_list(rows, features=Features({"image": ImageFeature(), "question": Value("string"),
                                               "answer": Value("string")})).to_parquet(str(data))
    (directory / f"{TASK}.py").write_text(TASK_MODULE)
    (directory / f"{TASK}.yaml").write_text(TASK_YAML.format(task=TASK, data=data))
    return directory


def generated(out) -> dict[int, str]:
    """Each document's answer as lmms-eval logged it (its task has no filter: the response)."""
    return {s["doc_id"]: s["filtered_resps"] for s in samples(out, TASK)}


# Every family with a tiny checkpoint whose lmms-eval adapter sees the same pixels (Family.lmms_eval_compare).
COMPARED = [name for name in FAMILIES if families.get(name).lmms_eval_compare != "none"]


def questions_of(family: str) -> list[str]:
    """One question where answers move with the image alone (the tiny LLaVA's); several otherwise
    (the tiny InstructBLIP answers every image alike)."""
    return QUESTIONS if family == "instructblip" else QUESTIONS[:1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """(family, "collab" | "lmms") -> Run, for every COMPARED family, in ONE lmms-eval process
    (tests/helpers.py evaluate_many: ``lmms-eval --config``, a run after another, each as a plain
    command runs it): collab's runs first, then lmms-eval's own adapters (so that nothing they do
    in the process runs before collab's)."""
    from collab_eval.checkpoints import resolve
    tmp = tmp_path_factory.mktemp("never-vs-lmms-eval")
    ours, theirs = {}, {}
    for family in COMPARED:
        declared = families.get(family)
        include = write_task(tmp / family / "task", questions_of(family))
        ours[family, "collab"] = Spec(
            declared.model_id, f"pretrained={declared.tiny_name},policy=never,codec=png,max_new_tokens=6,"
                               f"records_dir={tmp / family / 'collab' / 'records'}", TASK, tmp / family / "collab",
            include_path=include)
        path = resolve(declared.tiny_name)  # the files of the checkpoint collab's run loads by its short name
        theirs_args = ",".join(a for a in (f"pretrained={path}", declared.lmms_eval_model_args) if a)
        theirs[family, "lmms"] = Spec(declared.lmms_eval_model, theirs_args, TASK, tmp / family / "lmms",
                                      include_path=include)
    specs = {**ours, **theirs}
    return dict(zip(specs, evaluate_many(list(specs.values()))))


@pytest.mark.slow
@pytest.mark.parametrize("family", COMPARED)
def test_never_generates_what_lmms_eval_s_own_adapter_generates(runs, family):
    """collab_<family> policy=never,codec=png and lmms-eval's own adapter for the family, on its
    tiny checkpoint, through both command lines: the same generated text for every document.
    lmms-eval's instructblip returns the prompt in front of the answer under transformers 5:
    its response is the question followed by exactly what collab generated."""
    declared, questions = families.get(family), questions_of(family)
    ours = runs[family, "collab"]
    mine, theirs = generated(ours.out), generated(runs[family, "lmms"].out)
    assert sorted(mine) == sorted(theirs) == list(range(len(DOCS)))
    assert {r["doc_id"]: r["answer"] for r in ours.records} == mine
    assert len(set(mine.values())) > 1, mine  # answers that depend on the image: the comparison can fail
    for doc_id, text in mine.items():
        if declared.lmms_eval_compare == "after_prompt":  # its response: the prompt, then what it generated
            question = questions[doc_id % len(questions)]
            assert theirs[doc_id].startswith(question), (doc_id, theirs[doc_id])
            assert theirs[doc_id][len(question):].strip() == text.strip(), (doc_id, DOCS[doc_id], text, theirs[doc_id])
        else:
            assert theirs[doc_id].strip() == text.strip(), (doc_id, DOCS[doc_id], text, theirs[doc_id])
