"""collab_qwen2_vl and collab_instructblip through the lmms-eval command line on the local
TextVQA and POPE tasks, outputs checked, for every policy.

Each run is an lmms-eval start (tens of seconds on a shared CPU), so by default only one
run per family goes: Qwen2-VL with tiles (five images of different grids in one prompt),
InstructBLIP with always (RoI, generic map, two sets of query slots). COLLAB_EVAL_FULL=1
runs all ten. Every policy of both families also runs in process, always, in
tests/test_family_policies.py; the policies themselves are family-agnostic and go through
the command line for LLaVA in tests/test_lmms_cli.py.
"""
import os

import pytest

from collab_eval.policy import POLICIES, uniform
from tests.helpers import check_run, evaluate

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

# Every test here starts lmms-eval: the fast tier (-m 'not slow') skips the module.
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("model, policy", RUNS)
def test_cli_run(request, tmp_path, model, policy):
    checkpoint, family_args, _ = FAMILIES[model]
    path = request.getfixturevalue(checkpoint)
    policy_args = POLICY_ARGS.get(policy, f"policy={policy}")
    args = f"pretrained={path},{policy_args},{family_args},max_new_tokens=4,records_dir={tmp_path / 'records'}"
    run = evaluate(model, args, ",".join(TASKS), tmp_path, extra=("--limit", str(LIMIT)))
    check_run(run, TASKS, LIMIT)
    for r in run.records:
        assert r["error"] is None and r["model"] == path and r["policy"] == policy
        if policy == "threshold":
            assert r["retransmitted"] == (r["score"] is None or r["score"] > 5.5)
        if policy == "random":
            assert r["retransmitted"] == (uniform(f"{r['task']}/{r['doc_id']}", 3) < 0.5)
