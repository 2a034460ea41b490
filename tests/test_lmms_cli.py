"""collab_llava through the lmms-eval command line, one run per policy on the first
MINI_LIMIT documents of every local task, outputs checked."""
import io

import pytest
from datasets import load_dataset

from collab_eval.policy import uniform
from collab_eval.shipped import TASK_DATA_DIR
from tests.helpers import MINI_LIMIT, MINI_TASKS, check_run

# Every test here starts lmms-eval: the fast tier (-m 'not slow') skips the module.
pytestmark = pytest.mark.slow


def test_never_sends_only_the_global_image(tiny_llava_run):
    run = tiny_llava_run("policy=never")
    check_run(run, MINI_TASKS, MINI_LIMIT)
    assert not any(r["error"] or r["retransmitted"] for r in run.records)
    for task in MINI_TASKS:
        assert run.results["results"][task]["retransmitted,none"] == 0.0


def test_always_sends_global_request_and_local(tiny_llava_run):
    run = tiny_llava_run("policy=always")
    check_run(run, MINI_TASKS, MINI_LIMIT)
    recs = run.records
    assert all(r["retransmitted"] and r["error"] is None for r in recs)
    assert all(r["score"] == pytest.approx(max(r["min_entropy"])) for r in recs)  # score=max by default
    for task in MINI_TASKS:
        assert run.results["results"][task]["retransmitted,none"] == 1.0
    # The generic-prompt map is cached per image within a task: TextVQA and its OCR variant
    # share images but each pays for its own maps, so each task's costs stand alone.
    ocr = {r["doc_id"]: r for r in recs if r["task"] == "collab_textvqa_mini_ocr"}
    plain = {r["doc_id"]: r for r in recs if r["task"] == "collab_textvqa_mini"}
    assert not any(r["generic_cached"] for r in recs)  # the fixture's images are distinct within a task
    for doc_id, r in plain.items():
        assert r["image_key"] == ocr[doc_id]["image_key"]
        assert r["flops"]["generic"] == ocr[doc_id]["flops"]["generic"] > 0
    assert all(r["policy_args"] == {"threshold": 1.0, "rate": 0.5, "seed": 0} and r["rank"] == 0 for r in recs)


def test_bytes_original_is_the_original_png(tiny_llava_run):
    recs = tiny_llava_run("policy=never").records
    data = load_dataset("parquet", data_files={"validation": str(TASK_DATA_DIR / "textvqa_mini.parquet")})["validation"]
    for r in (r for r in recs if r["task"] == "collab_textvqa_mini"):
        buf = io.BytesIO()
        data[r["doc_id"]]["image"].convert("RGB").save(buf, format="PNG")
        assert r["bytes_original"] == len(buf.getvalue())
        assert r["image_size"] == list(data[r["doc_id"]]["image"].size)


def test_random_retransmits_the_samples_its_seed_picks(tiny_llava_run):
    run = tiny_llava_run("policy=random,rate=0.5,seed=3")
    check_run(run, MINI_TASKS, MINI_LIMIT)
    recs = run.records
    picked = {(r["task"], r["doc_id"]) for r in recs if r["retransmitted"]}
    expected = {(r["task"], r["doc_id"]) for r in recs if uniform(f"{r['task']}/{r['doc_id']}", 3) < 0.5}
    assert picked == expected and 0 < len(picked) < len(recs)


def test_threshold_gates_on_the_score(tiny_llava_run):
    never = tiny_llava_run("policy=never").records
    scores = sorted(r["score"] for r in never)
    tau = scores[len(scores) // 2]
    run = tiny_llava_run(f"policy=threshold,threshold={tau}")
    check_run(run, MINI_TASKS, MINI_LIMIT)
    recs = run.records
    for r in recs:
        assert r["retransmitted"] == (r["score"] > tau)
    assert 0 < sum(r["retransmitted"] for r in recs) < len(recs)
    # Stage 1 is the same computation whatever the policy.
    first = {(r["task"], r["doc_id"]): (r["answer_stage1"], r["score"]) for r in never}
    assert all(first[(r["task"], r["doc_id"])] == (r["answer_stage1"], r["score"]) for r in recs)


def test_ocr_prompt_only_in_the_ocr_task(tiny_llava_run):
    recs = tiny_llava_run("policy=always").records
    assert all("Reference OCR token" in r["question"] for r in recs if r["task"] == "collab_textvqa_mini_ocr")
    assert not any("Reference OCR token" in r["question"] for r in recs if r["task"] == "collab_textvqa_mini")
