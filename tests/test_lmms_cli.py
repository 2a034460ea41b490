"""collab_llava through the lmms-eval command line, one run per policy, outputs checked."""
import io

import pytest
from datasets import load_dataset

from collab_eval.policy import uniform
from tests.helpers import REPO, records, results_json, run_lmms_eval, samples

TASKS = "collab_textvqa_mini,collab_textvqa_mini_ocr,collab_pope_mini"
N_PER_TASK = 16

# Every test here starts lmms-eval: the fast tier (-m 'not slow') skips the module.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tiny_llava_path, tmp_path_factory):
    """Run once per policy (cached for the module): returns (out dir, results, records)."""
    done = {}

    def _run(policy_args: str):
        if policy_args not in done:
            out = tmp_path_factory.mktemp("run")
            proc = run_lmms_eval("collab_llava", f"pretrained={tiny_llava_path},{policy_args},records_dir={out / 'records'}",
                                 TASKS, out)
            assert proc.returncode == 0, proc.stderr[-3000:]
            done[policy_args] = (out, results_json(out), records(out / "records"))
        return done[policy_args]
    return _run


def by_task(recs):
    grouped = {}
    for r in recs:
        grouped.setdefault(r["task"], []).append(r)
    return grouped


def test_never_sends_only_the_global_image(run):
    out, results, recs = run("policy=never")
    assert len(recs) == 3 * N_PER_TASK and not any(r["error"] for r in recs)
    for r in recs:
        assert r["retransmitted"] is False and r["roi"] is None and r["answer_stage2"] is None
        assert r["bytes_total"] == r["bytes_global"] > 0 and r["bytes_request"] == r["bytes_local"] == 0
        assert r["flops"]["generic"] == r["flops"]["stage2"] == 0
        assert r["flops_total"] == sum(r["flops"].values()) > 0
        assert r["answer"] == r["answer_stage1"]
    for task, rs in by_task(recs).items():
        metrics = results["results"][task]
        assert metrics["retransmitted,none"] == 0.0
        assert metrics["bytes_total,none"] == pytest.approx(sum(r["bytes_total"] for r in rs) / len(rs))
        assert metrics["flops_total,none"] == pytest.approx(sum(r["flops_total"] for r in rs) / len(rs))


def test_always_sends_global_request_and_local(run):
    out, results, recs = run("policy=always")
    for r in recs:
        assert r["retransmitted"] is True and r["answer_stage2"] is not None and r["answer"] == r["answer_stage2"]
        assert r["bytes_request"] == 16 and r["bytes_local"] > 0
        assert r["bytes_total"] == r["bytes_global"] + r["bytes_request"] + r["bytes_local"]
        x0, y0, x1, y1 = r["roi"]
        assert 0 <= x0 < x1 <= r["image_size"][0] and 0 <= y0 < y1 <= r["image_size"][1]
        assert r["flops"]["stage2"] > r["flops"]["prefill"] > 0
        assert len(r["min_entropy"]) == len(r["shannon_entropy"]) >= 1
        assert r["score"] == pytest.approx(max(r["min_entropy"]))
    for task in by_task(recs):
        assert results["results"][task]["retransmitted,none"] == 1.0
    # The generic-prompt map is cached per image within a task: TextVQA and its OCR variant
    # share images but each pays for its own maps, so each task's costs stand alone.
    ocr = {r["doc_id"]: r for r in recs if r["task"] == "collab_textvqa_mini_ocr"}
    plain = {r["doc_id"]: r for r in recs if r["task"] == "collab_textvqa_mini"}
    assert not any(r["generic_cached"] for r in recs)  # the fixture's images are distinct within a task
    for doc_id, r in plain.items():
        assert r["image_key"] == ocr[doc_id]["image_key"]
        assert r["flops"]["generic"] == ocr[doc_id]["flops"]["generic"] > 0
    assert all(r["policy_args"] == {"threshold": 1.0, "rate": 0.5, "seed": 0} and r["rank"] == 0 for r in recs)


def test_bytes_original_is_the_original_png(run):
    _, _, recs = run("policy=never")
    data = load_dataset("parquet", data_files={"validation": str(REPO / "tasks/data/textvqa_mini.parquet")})["validation"]
    for r in (r for r in recs if r["task"] == "collab_textvqa_mini"):
        buf = io.BytesIO()
        data[r["doc_id"]]["image"].convert("RGB").save(buf, format="PNG")
        assert r["bytes_original"] == len(buf.getvalue())
        assert r["image_size"] == list(data[r["doc_id"]]["image"].size)


def test_random_retransmits_the_samples_its_seed_picks(run):
    _, results, recs = run("policy=random,rate=0.5,seed=3")
    picked = {(r["task"], r["doc_id"]) for r in recs if r["retransmitted"]}
    expected = {(r["task"], r["doc_id"]) for r in recs if uniform(f"{r['task']}/{r['doc_id']}", 3) < 0.5}
    assert picked == expected and 0 < len(picked) < len(recs)


def test_threshold_gates_on_the_score(run):
    _, _, never = run("policy=never")
    scores = sorted(r["score"] for r in never)
    tau = scores[len(scores) // 2]
    _, _, recs = run(f"policy=threshold,threshold={tau}")
    for r in recs:
        assert r["retransmitted"] == (r["score"] > tau)
    # Stage 1 is the same computation whatever the policy.
    first = {(r["task"], r["doc_id"]): (r["answer_stage1"], r["score"]) for r in never}
    assert all(first[(r["task"], r["doc_id"])] == (r["answer_stage1"], r["score"]) for r in recs)


def test_log_samples_carry_costs_and_ocr_prompt(run):
    out, _, recs = run("policy=always")
    cost = {(r["task"], r["doc_id"]): r for r in recs}
    for task in TASKS.split(","):
        logged = samples(out, task)
        assert len(logged) == N_PER_TASK
        for s in logged:
            counts = s["token_counts"][0]
            record = cost[(task, s["doc_id"])]
            assert counts["bytes_total"] == record["bytes_total"] and counts["flops_total"] == record["flops_total"]
    assert all("Reference OCR token" in r["question"] for r in recs if r["task"] == "collab_textvqa_mini_ocr")
    assert not any("Reference OCR token" in r["question"] for r in recs if r["task"] == "collab_textvqa_mini")
