"""collab_qwen2_vl and collab_instructblip through the lmms-eval command line on the local
TextVQA and POPE tasks, outputs checked, for every policy.

Each run is an lmms-eval start (tens of seconds on a shared CPU), so by default only one
run per family goes: Qwen2-VL with tiles (five images of different grids in one prompt),
InstructBLIP with always (RoI, generic map, two sets of query slots). COLLAB_EVAL_FULL=1
runs all ten. Every policy of both families also runs in process, always, in
tests/test_family_policies.py; the policies themselves are family-agnostic and go through
the command line for LLaVA in tests/test_lmms_cli.py.
"""
import dataclasses
import os

import pytest

from collab_eval.policy import POLICIES, uniform
from collab_eval.records import SampleRecord
from tests.helpers import records, results_json, run_lmms_eval, samples

TASKS = ("collab_textvqa_mini", "collab_pope_mini")
LIMIT = 4
FAMILIES = {  # model: (checkpoint fixture, family-specific args, exercised here)
    "collab_qwen2_vl": ("tiny_qwen2_vl_path", "max_pixels=12544", "tiles"),
    "collab_instructblip": ("tiny_instructblip_path", "qformer_layer=1", "always"),
}
POLICY_ARGS = {"threshold": "policy=threshold,threshold=5.5", "random": "policy=random,rate=0.5,seed=3"}
FULL = bool(os.environ.get("COLLAB_EVAL_FULL"))
RUNS = [pytest.param(model, policy, id=f"{model}-{policy}",
                     marks=() if FULL or policy == default else pytest.mark.skip(reason="set COLLAB_EVAL_FULL=1"))
        for model, (_, _, default) in FAMILIES.items() for policy in POLICIES]
FIELDS = {f.name for f in dataclasses.fields(SampleRecord)}

# Every test here starts lmms-eval: the fast tier (-m 'not slow') skips the module.
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("model, policy", RUNS)
def test_cli_run(request, tmp_path, model, policy):
    checkpoint, family_args, _ = FAMILIES[model]
    path = request.getfixturevalue(checkpoint)
    policy_args = POLICY_ARGS.get(policy, f"policy={policy}")
    args = f"pretrained={path},{policy_args},{family_args},max_new_tokens=4,records_dir={tmp_path / 'records'}"
    proc = run_lmms_eval(model, args, ",".join(TASKS), tmp_path, extra=("--limit", str(LIMIT)))
    assert proc.returncode == 0, proc.stderr[-3000:]

    recs = records(tmp_path / "records")
    assert len(recs) == LIMIT * len(TASKS)
    assert sorted({r["task"] for r in recs}) == sorted(TASKS)
    for r in recs:
        assert set(r) == FIELDS and r["error"] is None, r.get("error")
        assert r["model"] == path and r["policy"] == policy
        assert r["bytes_total"] == r["bytes_global"] + r["bytes_request"] + r["bytes_local"]
        assert r["flops_total"] == sum(r["flops"].values()) > 0
        assert r["bytes_global"] > 0 and r["answer_stage1"] is not None and r["min_entropy"]
        if policy == "threshold":
            assert r["retransmitted"] == (r["score"] is None or r["score"] > 5.5)
        if policy == "random":
            assert r["retransmitted"] == (uniform(f"{r['task']}/{r['doc_id']}", 3) < 0.5)
        if policy in ("always", "tiles"):
            assert r["retransmitted"]
        if not r["retransmitted"]:
            assert r["bytes_total"] == r["bytes_global"] and policy != "tiles"
            assert r["answer_stage2"] is None and r["flops"]["stage2"] == r["flops"]["generic"] == 0
        else:
            assert r["bytes_local"] > 0 and r["flops"]["stage2"] > 0 and policy != "never"
            assert r["answer"] == r["answer_stage2"] is not None
        if r["retransmitted"] and policy != "tiles":
            assert r["bytes_request"] == 16 and r["roi"] is not None
        if policy == "tiles":
            assert r["bytes_request"] == 0 and r["roi"] is None and r["flops"]["generic"] == 0

    results = results_json(tmp_path)
    for task in TASKS:
        metrics = results["results"][task]
        rs = [r for r in recs if r["task"] == task]
        assert metrics["retransmitted,none"] == pytest.approx(sum(r["retransmitted"] for r in rs) / len(rs))
        if policy in ("never", "always", "tiles"):
            assert metrics["retransmitted,none"] == (0.0 if policy == "never" else 1.0)
        assert metrics["bytes_total,none"] == pytest.approx(sum(r["bytes_total"] for r in rs) / len(rs))
        assert metrics["flops_total,none"] == pytest.approx(sum(r["flops_total"] for r in rs) / len(rs))
        logged = samples(tmp_path, task)
        assert len(logged) == LIMIT
        by_doc = {r["doc_id"]: r for r in rs}
        for s in logged:
            counts = s["token_counts"][0]
            assert counts["bytes_total"] == by_doc[s["doc_id"]]["bytes_total"]
            assert counts["flops_total"] == by_doc[s["doc_id"]]["flops_total"]
