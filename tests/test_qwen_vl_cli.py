"""collab_qwen2_5_vl and collab_qwen3_vl through the lmms-eval command line on their tiny
checkpoints: every policy (2 smalldetail_read documents each); and ``policy=never,codec=png``
answering, sample by sample, as lmms-eval's own ``qwen2_5_vl`` / ``qwen3_vl`` adapters do on the
same checkpoint and task (8 noise images, square and non-square, at sizes neither side resizes).

What lmms-eval's adapters do by design, and how the comparison meets it (docs/families.md):
- They resize with PIL (qwen_vl_utils) before the processor; collab's global image is the
  processor's own resize (Server.global_view): the task's originals are multiples of 224 px.
- ``--model qwen2_5_vl`` / ``qwen3_vl`` run lmms-eval's chat classes, which hand images to
  qwen_vl_utils without the model args' pixel budget: every image is shown at its own size
  rounded to the patch grid (qwen_vl_utils' default budget of 4 to 16,384 tokens). Our
  default budget is LLaVA-1.5's input area; the comparison gives ours a budget that holds
  every image (``max_pixels`` = lmms-eval's default 1,605,632) and qwen_vl_utils' lower bound.
- They load bfloat16 whatever the device: ours runs with ``dtype=bfloat16`` here.
- They generate up to 128 new tokens and stop only at ``<|im_end|>``: both runs get
  ``--gen_kwargs max_new_tokens=12``; the tiny checkpoints never emit an end token.

Each family's seven runs (five policies, ours and lmms-eval's on the grid task) share ONE lmms-eval
process (tests/helpers.py ``evaluate_many``: ``lmms-eval --config``, a run after another, each as
a plain command runs it), made once by the module's fixture; the tests assert on its outputs.
"""
import json

import numpy as np
import pytest

from collab_eval import families
from tests.helpers import Spec, check_run, evaluate_many, qwen2_vl_kind, samples, token_side

pytestmark = pytest.mark.slow

TASK = "collab_textvqa_mini"  # square and non-square images from 48 x 40 to 640 x 480
# The registered families on Qwen2-VL's server whose lmms-eval adapter is a qwen_vl_utils chat
# class (Qwen2.5-VL, Qwen3-VL; Qwen2-VL's own re-encodes as JPEG: docs/families.md).
FAMILIES = qwen2_vl_kind(strict=True)
MAX_PIXELS = 1605632  # lmms-eval's qwen adapters' default; holds every image of the task
POLICIES = ("never", "always", "threshold", "random", "tiles")
# Originals larger than the encoder's input (469 to 575 px high), so that a crop is a crop.
POLICY_TASK = "smalldetail_read"


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_through_lmms_eval(runs, policy):
    run = runs[policy]
    check_run(run, (POLICY_TASK,), 2)
    for r in run.records:
        assert r["error"] is None and r["policy"] == policy and r["answer"].strip()
        if policy in ("never", "always", "tiles"):
            assert r["retransmitted"] == (policy != "never")


# Originals at sizes neither resize changes (multiples of 224: of 28 and 32 px tokens), square and
# not: lmms-eval's chat classes resize an image with PIL (qwen_vl_utils) before the processor, while
# collab's global image is the processor's own resize of the original (Server.global_view); where
# an original needs a resize their pixels differ by design (on collab_textvqa_mini, 2 of 8 answers
# of the tiny Qwen2.5-VL differed, none of Qwen3-VL's: docs/families.md).
GRID_SIZES = [(224, 224), (448, 224), (224, 448), (672, 224), (448, 448), (224, 672), (672, 448), (448, 672)]


def grid_task(directory):
    """The never-vs-lmms-eval task of tests/test_never_equals_lmms_eval.py on GRID_SIZES' noise."""
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature
    from PIL import Image

    from tests.test_never_equals_lmms_eval import QUESTIONS, TASK_MODULE, TASK_YAML
    directory.mkdir()
    rng = np.random.default_rng(0)
    rows = [{"image": Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)),
             "question": QUESTIONS[i % len(QUESTIONS)], "answer": "block"} for i, (w, h) in enumerate(GRID_SIZES)]
    data = directory / f"{GRID_TASK}.parquet"
    Dataset.from_list(rows, features=Features({"image": ImageFeature(), "question": Value("string"),
                                               "answer": Value("string")})).to_parquet(str(data))
    (directory / f"{GRID_TASK}.py").write_text(TASK_MODULE)
    (directory / f"{GRID_TASK}.yaml").write_text(TASK_YAML.format(task=GRID_TASK, data=data))
    return directory


GRID_TASK = "qwen_grid_never"


@pytest.fixture(scope="module", params=FAMILIES)
def runs(request, tmp_path_factory) -> dict:
    """One family's runs, in one lmms-eval process: each policy on POLICY_TASK (2 documents), then
    ``policy=never,codec=png`` on the grid task (``ours``), then lmms-eval's own adapter on it
    (``theirs``: last, so that nothing it does in the process runs before ours)."""
    from collab_eval.checkpoints import resolve
    family = request.param
    tmp = tmp_path_factory.mktemp(f"qwen-cli-{family}")
    declared = families.get(family)
    model, reference, cpu_args = declared.model_id, declared.lmms_eval_model, declared.lmms_eval_model_args
    path = resolve(declared.tiny_name)
    specs = {policy: Spec(model, f"pretrained={path},policy={policy},threshold=0.5,max_new_tokens=4,"
                                 f"records_dir={tmp / policy / 'records'}", POLICY_TASK, tmp / policy,
                          options=("--limit", "2"))
             for policy in POLICIES}
    min_pixels = 4 * token_side(family) ** 2  # qwen_vl_utils' lower bound: 4 tokens
    include = grid_task(tmp / "task")
    limit = ("--gen_kwargs", "max_new_tokens=12")
    specs["ours"] = Spec(model, f"pretrained={path},policy=never,codec=png,dtype=bfloat16,max_pixels={MAX_PIXELS},"
                                f"min_pixels={min_pixels},records_dir={tmp / 'ours' / 'records'}", GRID_TASK,
                         tmp / "ours", include_path=include, options=limit)
    specs["theirs"] = Spec(reference, f"pretrained={path},{cpu_args},max_pixels={MAX_PIXELS},min_pixels={min_pixels}",
                           GRID_TASK, tmp / "theirs", include_path=include, options=limit)
    return dict(zip(specs, evaluate_many(list(specs.values()))))


def test_never_answers_as_lmms_evals_own_adapter(runs):
    answers = {s["doc_id"]: s["filtered_resps"] for s in samples(runs["theirs"].out, GRID_TASK)}
    mine = {s["doc_id"]: s["filtered_resps"] for s in samples(runs["ours"].out, GRID_TASK)}
    assert sorted(answers) == sorted(mine) == list(range(len(GRID_SIZES)))
    differ = {doc: (answers[doc], mine[doc]) for doc in answers if answers[doc].strip() != mine[doc].strip()}
    assert not differ, json.dumps(differ, ensure_ascii=False)
    assert len({a.strip() for a in answers.values()}) > 4  # the answers depend on the input: equal says something
    sizes = {tuple(r["image_sizes"][0]) for r in runs["ours"].records}
    assert any(w == h for w, h in sizes) and any(w != h for w, h in sizes)
