"""collab_qwen2_vl and collab_instructblip through the lmms-eval command line on the local
TextVQA and POPE tasks, outputs checked, for every policy.

Each run is an lmms-eval start, so one run per family goes: Qwen2-VL with tiles (five
images of different grids in one prompt), InstructBLIP with always (RoI, generic map, two
sets of query slots). Every policy of both families runs in process, through the same
pipeline, in tests/test_family_policies.py; the policies themselves are family-agnostic and
go through the command line for LLaVA in tests/test_lmms_cli.py.
"""
import pytest

from tests.helpers import check_run, evaluate

TASKS = ("collab_textvqa_mini", "collab_pope_mini")
LIMIT = 4
FAMILIES = {  # model: (checkpoint fixture, family-specific args, the policy run here)
    "collab_qwen2_vl": ("tiny_qwen2_vl_path", "max_pixels=12544", "tiles"),
    "collab_instructblip": ("tiny_instructblip_path", "qformer_layer=1", "always"),
}
RUNS = [pytest.param(model, policy, id=f"{model}-{policy}") for model, (_, _, policy) in FAMILIES.items()]

# Every test here starts lmms-eval: the fast tier (-m 'not slow') skips the module.
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("model, policy", RUNS)
def test_cli_run(request, tmp_path, model, policy):
    checkpoint, family_args, _ = FAMILIES[model]
    path = request.getfixturevalue(checkpoint)
    args = f"pretrained={path},policy={policy},{family_args},max_new_tokens=4,records_dir={tmp_path / 'records'}"
    run = evaluate(model, args, ",".join(TASKS), tmp_path, extra=("--limit", str(LIMIT)))
    check_run(run, TASKS, LIMIT)
    for r in run.records:
        assert r["error"] is None and r["model"] == path and r["policy"] == policy
