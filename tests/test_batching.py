"""batch_size: stage 1 of a batch in one left-padded generate, stage 2 of its retransmitted
samples in one more. Every record equals the one batch_size=1 writes (answers, RoI, bytes, FLOPs; scores
within 1e-4), for each family and policy, in process on the tiny checkpoints."""
import math

import numpy as np
import pytest
from PIL import Image

from collab_eval.edge import Codec
from collab_eval.model_args import ModelArgError
from collab_eval.pipeline import Limits, Method, RunCaches, SampleInput, run_batch
from collab_eval.policy import Policy
from collab_eval.records import SampleRecord
from tests.helpers import FAMILIES, TRAINED, small_budget

SIZES = [(210, 500), (400, 260), (300, 300), (120, 90), (333, 517), (64, 700), (256, 200)]  # (h, w), all different
QUESTIONS = ["is there a red square in the image ?", "what is written", "which colour is the car , and why",
             "a", "how many", "read the sign on the left", "where"]
POLICIES = ["always", "never", "threshold", "tiles", "random"]
N_DOCUMENTS = len(SIZES)  # one document per size


def documents():
    rng = np.random.default_rng(0)
    docs = [{"image": Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)), "question_id": i}
            for i, (h, w) in enumerate(SIZES)]
    docs[2]["image2"] = docs[3]["image"]  # one document with two images
    return docs


def visuals(doc):
    return [doc["image"], *([doc["image2"]] if "image2" in doc else [])]


@pytest.fixture(scope="module", params=FAMILIES)
def adapter(request, tiny_server):
    return tiny_server(request.param, **small_budget(request.param))


def run(server, policy: Policy, batch_size: int, visuals_of=visuals) -> tuple[list[str], list]:
    """Every document through the pipeline in batches of ``batch_size``, as the adapter runs a
    fresh run (no generic map cached): the answers and outcomes in document order."""
    method, caches = Method(policy, Codec.parse("png")), RunCaches()
    samples = [SampleInput(key=f"t/{i}", scope="t", question=q, limits=Limits(max_new_tokens=4),
                           visuals=lambda doc=doc: visuals_of(doc))
               for i, (doc, q) in enumerate(zip(documents(), QUESTIONS))]
    results = [result for first in range(0, len(samples), batch_size)
               for result in run_batch(server, samples[first:first + batch_size], method=method, caches=caches)]
    results.sort(key=lambda r: samples.index(r.sample))
    return [r.outcome.answer if r.outcome else "" for r in results], results


def assert_same(a, b, path="record"):
    if isinstance(a, float) and isinstance(b, float):
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-4), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def compare(alone, batched, count=N_DOCUMENTS):
    """Pipeline results (or records read back): equal but for seconds and run id."""
    assert len(alone) == len(batched) == count
    for i, (a, b) in enumerate(zip(alone, batched)):
        assert a.error is None and b.error is None, (a.error, b.error)
        a, b = (getattr(x, "outcome", None) or x for x in (a, b))
        for name in sorted(set(vars(a)) - {"seconds", "run_id"}):
            assert_same(getattr(a, name), getattr(b, name), f"sample {i}.{name}")


# The fast tier batches both stages for every family: always (every sample to stage 2) and threshold
# (some, in the same batch as others that stop after stage 1); never, tiles and random run in the
# slow tier (seconds in all over the families: tests/test_family_policies.py runs each of them
# per family in the fast tier, unbatched).
FAST_POLICIES = ("always", "threshold")


@pytest.mark.parametrize("policy_name", [pytest.param(p, marks=() if p in FAST_POLICIES else pytest.mark.slow)
                                         for p in POLICIES])
def test_batch_of_four_records_what_one_at_a_time_records(adapter, policy_name):
    threshold = 1.0
    if policy_name == "threshold":  # a threshold between the samples' scores: some go to stage 2, some do not
        _, never = run(adapter, Policy("never"), 1)
        # Halfway between the two middle scores: a median of an odd count is one sample's own
        # score, whose decision then flips with batching's ~1e-6 rounding.
        scores = sorted(r.outcome.score for r in never)
        threshold = (scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2
    policy = Policy(policy_name, threshold=threshold, rate=0.5, seed=3)
    answers1, alone = run(adapter, policy, 1)
    answers4, batched = run(adapter, policy, 4)
    assert answers1 == answers4
    compare(alone, batched)
    sent = [r.outcome.retransmitted for r in alone]
    if policy_name in ("threshold", "random"):
        assert any(sent) and not all(sent), sent  # both kinds of sample in one batch
    else:
        assert all(sent) if policy_name != "never" else not any(sent)


@pytest.mark.parametrize("family", TRAINED)
@pytest.mark.slow  # a second or more: the fast tier stays under a minute
def test_trained_checkpoints_batch_as_they_run_alone(family, tiny_server):
    """The same equality on the shipped trained checkpoints (whose answers are not noise):
    always, and a threshold some samples pass, in batches of four."""
    server = tiny_server(family, checkpoint=TRAINED[family])
    _, never = run(server, Policy("never"), 1)
    scores = sorted(r.outcome.score for r in never)
    middle = (scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2
    for policy in (Policy("always"), Policy("threshold", threshold=middle)):
        answers1, alone = run(server, policy, 1)
        answers4, batched = run(server, policy, 4)
        assert answers1 == answers4
        compare(alone, batched)


def test_rows_end_at_their_own_eos(adapter):
    """A row whose answer reaches EOS keeps only its tokens (and logits) up to it, while the
    longer rows of its batch go on: EOS planted on a token one sample generates mid-answer."""
    limits = Limits(max_new_tokens=5)
    requests = [(visuals(doc), q) for doc, q in zip(documents()[:4], QUESTIONS)]
    free = [adapter.answer_batch([r], limits, with_attention=False)[0].logits.argmax(-1).tolist() for r in requests]
    # A token one sample generates after its first step and another sample never does.
    planted = next((t for ids in free for t in ids[1:]
                    if t not in ids[:1] and any(t not in other for other in free)), None)
    if planted is None:
        pytest.skip(f"{adapter.name}'s tiny checkpoint generates one token everywhere: no EOS to plant")
    config = adapter.model.generation_config
    saved = config.eos_token_id
    try:
        config.eos_token_id = planted
        alone = [adapter.answer_batch([r], limits, with_attention=False)[0] for r in requests]
        batched = adapter.answer_batch(requests, limits, with_attention=False)
    finally:
        config.eos_token_id = saved
    steps = [len(a.logits) for a in alone]
    assert 1 < min(steps) < 5 and max(steps) == 5, (steps, free)  # one row stops early, another runs to the cap
    for a, b in zip(alone, batched):
        assert (a.text, len(a.logits), a.flops) == (b.text, len(b.logits), b.flops)
        assert np.allclose(a.logits.numpy(), b.logits.numpy(), atol=1e-4)


@pytest.mark.parametrize("value, expected", [("4", 4), ("auto", 1), (2, 2), ("1", 1)])
def test_batch_size_as_lmms_eval_passes_it(tiny_llava_path, tmp_path, value, expected):
    from model_adapters.llava import CollabLlava
    assert CollabLlava(pretrained=tiny_llava_path, records_dir=str(tmp_path), batch_size=value).batch_size == expected


def test_bad_batch_size_names_the_arg(tiny_llava_path, tmp_path):
    from model_adapters.llava import CollabLlava
    with pytest.raises(ModelArgError, match="batch_size"):
        CollabLlava(pretrained=tiny_llava_path, records_dir=str(tmp_path), batch_size="0")


@pytest.mark.slow
def test_lmms_eval_batch_size_4_records_what_batch_size_1_records(tiny_llava_path, tmp_path):
    """The command line's --batch_size reaches the adapter (as a string) and changes nothing
    the run records or scores: policy=always, 8 POPE documents (prompts of different lengths:
    padded rows), batches of 4."""
    from tests.helpers import Spec, evaluate_many
    outs = {batch: tmp_path / f"batch{batch}" for batch in (1, 4)}
    specs = [Spec("collab_llava", f"pretrained={tiny_llava_path},policy=always,records_dir={out / 'records'}",
                  "collab_pope_mini", out, options=("--limit", "8", "--batch_size", str(batch)))
             for batch, out in outs.items()]
    runs = dict(zip((1, 4), evaluate_many(specs)))  # both runs in one lmms-eval process (lmms-eval --config)
    alone, batched = ([SampleRecord.from_dict(r) for r in sorted(runs[b].records, key=lambda r: r["doc_id"])]
                      for b in (1, 4))
    compare(alone, batched, count=8)
    metrics = [{k: v for k, v in runs[b].results["results"]["collab_pope_mini"].items() if "stderr" not in k}
               for b in (1, 4)]
    assert_same(metrics[0], metrics[1], "results")


def test_a_bad_sample_fails_alone_in_its_batch(adapter):
    """A document whose visuals are a video fails its own record; the rest of its batch is
    recorded as when run alone."""
    def with_a_video(doc):
        return ["clip.mp4"] if doc["question_id"] == 1 else visuals(doc)

    runs = {batch: run(adapter, Policy("always"), batch, visuals_of=with_a_video)[1] for batch in (1, 4)}
    for i, (alone, batched) in enumerate(zip(runs[1], runs[4])):
        assert (alone.error is None) == (batched.error is None) == (i != 1), (i, alone.error, batched.error)
        assert str(alone.error) == str(batched.error)
    compare([r for i, r in enumerate(runs[1]) if i != 1], [r for i, r in enumerate(runs[4]) if i != 1],
            count=len(SIZES) - 1)


@pytest.mark.slow  # a second or more: the fast tier stays under a minute
def test_without_prefix_reuse_too(adapter):
    """reuse_prefix=false: stage 2 recomputes everything after a batched stage 1 (Qwen2-VL's
    rotary state from a batch of rows must not leak into a lone stage 2)."""
    adapter.reuse_prefix = False
    try:
        answers1, alone = run(adapter, Policy("always"), 1)
        answers4, batched = run(adapter, Policy("always"), 4)
    finally:
        adapter.reuse_prefix = True
    assert answers1 == answers4
    compare(alone, batched)
    _, reused = run(adapter, Policy("always"), 4)
    assert all(off.outcome.flops["stage2"] > on.outcome.flops["stage2"]  # the prefix recomputed
               for off, on in zip(batched, reused))
