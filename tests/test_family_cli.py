"""collab_qwen2_vl and collab_instructblip through the lmms-eval command line on the local
TextVQA and POPE tasks, outputs checked, for every policy.

Each run is an lmms-eval start, so one run per family goes: Qwen2-VL with tiles (five
images of different grids in one prompt), InstructBLIP with always (RoI, generic map, two
sets of query slots). Every policy of both families runs in process, through the same
pipeline, in tests/test_family_policies.py; the policies themselves are family-agnostic and
go through the command line for LLaVA in tests/test_lmms_cli.py. Both runs share one lmms-eval
process (tests/helpers.py ``evaluate_many``: ``lmms-eval --config``).
"""
import pytest

from tests.helpers import Spec, check_run, evaluate_many

TASKS = ("collab_textvqa_mini", "collab_pope_mini")
LIMIT = 4
FAMILIES = {  # model: (checkpoint fixture, family-specific args, the policy run here)
    "collab_qwen2_vl": ("tiny_qwen2_vl_path", "max_pixels=12544", "tiles"),
    "collab_instructblip": ("tiny_instructblip_path", "qformer_layer=1", "always"),
}
RUNS = [pytest.param(model, policy, id=f"{model}-{policy}") for model, (_, _, policy) in FAMILIES.items()]

# Every test here starts lmms-eval: the fast tier (-m 'not slow') skips the module.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory) -> dict:
    """model -> its Run (its family's policy of FAMILIES), every family's in one lmms-eval process."""
    tmp = tmp_path_factory.mktemp("family-cli")
    specs = {}
    for model, (checkpoint, family_args, policy) in FAMILIES.items():
        path = request.getfixturevalue(checkpoint)
        specs[model] = Spec(model, f"pretrained={path},policy={policy},{family_args},max_new_tokens=4,"
                                   f"records_dir={tmp / model / 'records'}", ",".join(TASKS), tmp / model,
                            options=("--limit", str(LIMIT)))
    return dict(zip(specs, evaluate_many(list(specs.values()))))


@pytest.mark.parametrize("model, policy", RUNS)
def test_cli_run(request, runs, model, policy):
    path = request.getfixturevalue(FAMILIES[model][0])
    run = runs[model]
    check_run(run, TASKS, LIMIT)
    for r in run.records:
        assert r["error"] is None and r["model"] == path and r["policy"] == policy
