"""The pipeline on the real tiny LLaVA, for the cases the CLI runs rarely meet."""

import pytest
from PIL import Image

from collab_eval.edge import Codec
from collab_eval.pipeline import Limits, Method, RunCaches
from collab_eval.policy import Policy
from tests.helpers import check_record, run_one


@pytest.fixture(scope="module")
def llava(tiny_server):
    return tiny_server("llava")


def run(model, image, question, key, settings, cache):
    return run_one(model, [image], question, method=settings, limits=Limits(max_new_tokens=1),
                      key=key, scope="t", caches=cache)


def test_an_empty_answer_is_scored_and_gated(llava):
    """The model ends its answer at once: the text is empty, its one step still has an
    entropy, and the gate decides on it like any other answer."""
    eos = llava.processor.tokenizer.eos_token_id
    llava.model.generation_config.forced_eos_token_id = eos  # forces EOS at the last (only) step
    try:
        image = Image.new("RGB", (200, 120), "white")
        settings = Method(Policy("threshold", threshold=0.0), Codec.parse("png"))
        done = run(llava, image, "what is it?", "t/0", settings, RunCaches())
    finally:
        llava.model.generation_config.forced_eos_token_id = None
    check_record(done, settings, llava.name)
    assert done.answer_stage1 == "" and len(done.min_entropy) == 1
    assert done.score == pytest.approx(done.min_entropy[0]) and done.score > 0
    assert done.retransmitted and done.roi is not None and done.answer_stage2 is not None


def test_never_reads_no_attention_and_pays_no_roi_cost(llava):
    image = Image.new("RGB", (90, 300), "gray")
    settings = Method(Policy("never"), Codec.parse("jpeg:80"))
    done = run(llava, image, "what is it?", "t/0", settings, RunCaches())
    check_record(done, settings, llava.name)
    assert done.roi is None and done.bytes_total == done.bytes_global
    assert (done.flops["generic"] == done.flops["stage2"] == 0
            and done.seconds.keys() == {"edge_global", "stage1", "total"})


def test_generic_map_is_computed_once_per_received_image(llava):
    cache = RunCaches()
    image = Image.new("RGB", (100, 100), "white")
    settings = Method(Policy("always"), Codec.parse("png"))
    first = run(llava, image, "one?", "t/0", settings, cache)
    second = run(llava, image, "two?", "t/1", settings, cache)
    check_record(first, settings, llava.name)
    check_record(second, settings, llava.name)
    assert not first.generic_cached and first.flops["generic"] > 0
    assert second.generic_cached and second.flops["generic"] == 0 and len(cache.generic_maps) == 1


def test_bytes_original_is_encoded_once_per_distinct_original(llava):
    """Questions on the same original (a new but pixel-equal image object each time) reuse
    its encoded size; another original, codec or task is encoded anew."""
    import numpy as np

    from collab_eval.edge import sanitize
    photo = np.random.default_rng(0).integers(0, 256, (120, 200, 3), dtype=np.uint8)
    settings = Method(Policy("never"), Codec.parse("png"))
    sizes = RunCaches()
    done = [run_one(llava, [Image.fromarray(photo)], q, method=settings, limits=Limits(max_new_tokens=1),
                       key=f"t/{i}", scope="t", caches=sizes)
            for i, q in enumerate(["one?", "two?"])]
    png = len(Codec.parse("png").encode(sanitize(Image.fromarray(photo))))
    assert done[0].bytes_original == done[1].bytes_original == png and len(sizes.original_sizes) == 1
    other = Image.fromarray(photo[::-1].copy())
    assert (sizes.original_size(other, Codec.parse("png"), "t") == len(Codec.parse("png").encode(other))
            and len(sizes.original_sizes) == 2)
    assert (sizes.original_size(Image.fromarray(photo), Codec.parse("jpeg:50"), "t") != png
            and len(sizes.original_sizes) == 3)
    sizes.original_size(Image.fromarray(photo), Codec.parse("png"), "other-task")
    assert len(sizes.original_sizes) == 4
