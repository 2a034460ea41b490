"""collab_llava_next through the lmms-eval command line on its tiny checkpoint: every policy,
and ``policy=never,codec=png`` answering as lmms-eval's own ``llava_hf`` does on the same
checkpoint, document by document (square, wide, tall, under and over the pinpoints).

The seven runs share ONE lmms-eval process (tests/helpers.py ``evaluate_many``: ``lmms-eval
--config``, a run after another, each as a plain command runs it), made once by the module's
fixture; the tests assert on its outputs."""
import pytest

from collab_eval import families
from collab_eval.policy import POLICIES
from tests.helpers import Spec, check_run, evaluate_many, samples

LIMIT = 2
TASKS = ("collab_textvqa_mini", "collab_pope_mini")
FAMILY = families.get("llava_next")
COMPARED = "collab_pope_mini"  # 16 documents; 8 new tokens at most (textvqa's would let llava_hf run 1024)

# Every test here starts lmms-eval: the fast tier (-m 'not slow') skips the module.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def tiny_llava_next_path() -> str:
    from collab_eval.checkpoints import resolve
    return resolve("tiny-llava-next")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_llava_next_path) -> dict:
    """In one lmms-eval process: every policy on TASKS (LIMIT documents each), then
    ``policy=never,codec=png`` on COMPARED (``ours``), then lmms-eval's own adapter as the family
    declares it (llava_hf, device=cpu,device_map=cpu) on it (``theirs``: last, so that nothing it
    does in the process runs before ours)."""
    tmp = tmp_path_factory.mktemp("llava-next-cli")
    path = tiny_llava_next_path
    specs = {policy: Spec(FAMILY.model_id, f"pretrained={path},policy={policy},max_new_tokens=4,"
                                           f"records_dir={tmp / policy / 'records'}", ",".join(TASKS), tmp / policy,
                          options=("--limit", str(LIMIT)))
             for policy in POLICIES}
    specs["ours"] = Spec(FAMILY.model_id, f"pretrained={path},policy=never,codec=png,max_new_tokens=8,"
                                          f"records_dir={tmp / 'ours' / 'records'}", COMPARED, tmp / "ours")
    specs["theirs"] = Spec(FAMILY.lmms_eval_model, f"pretrained={path},{FAMILY.lmms_eval_model_args}", COMPARED,
                           tmp / "theirs")
    return dict(zip(specs, evaluate_many(list(specs.values()))))


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_through_the_command_line(runs, tiny_llava_next_path, policy):
    run = runs[policy]
    check_run(run, TASKS, LIMIT)
    for r in run.records:
        assert r["error"] is None and r["model"] == tiny_llava_next_path and r["policy"] == policy


def generated(out, task) -> dict[int, str]:
    """Each document's generated text from lmms-eval's samples log (its logger folds
    one-element lists and drops ``resps`` when it equals ``filtered_resps``)."""
    texts = {}
    for sample in samples(out, task):
        text = sample["filtered_resps"]
        while isinstance(text, list):
            text = text[0]
        texts[sample["doc_id"]] = text.strip()
    return texts


def test_never_answers_as_lmms_evals_llava_hf(runs):
    """The same generated text as llava_hf for every document: the edge sends each image at
    the pinpoint fit the processor would resize it to (or as it is, under the pinpoints), so
    the tiles are the processor's own up to PIL's and torchvision's rounding (one grey level)
    and the base view is squashed from the fit rather than the original (docs/families.md)."""
    ours, theirs = runs["ours"], runs["theirs"]
    assert len(ours.records) == 16
    sizes = {tuple(r["image_size"]) for r in ours.records}
    assert any(w != h for w, h in sizes) and any(w == h for w, h in sizes)  # square and non-square
    assert any(w * h > 112 * 336 for w, h in sizes) and any(w < 112 for w, _ in sizes)  # over and under
    mine, reference = generated(ours.out, COMPARED), generated(theirs.out, COMPARED)
    assert mine.keys() == reference.keys()
    differ = {doc: (mine[doc], reference[doc]) for doc in mine if mine[doc] != reference[doc]}
    assert not differ, differ
    assert any(mine.values())  # not all empty: the comparison compares something
