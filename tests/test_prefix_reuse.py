"""Stage 2 and the generic-prompt pass continue from stage 1's cached prefix (the prompt's
start through the global image): same greedy answers and maps as a fresh pass, fewer
FLOPs, for every family; ``reuse_prefix=false`` recomputes everything."""
import numpy as np
import pytest
import torch
from PIL import Image

from collab_eval.edge import Codec
from collab_eval.pipeline import GENERIC_PROMPT, Limits, Method, RunCaches
from collab_eval.policy import Policy
from tests.helpers import run_one

LIMITS = Limits(max_new_tokens=6)
QUESTION = "what is the number on the sign ?"
GLOBAL = Image.fromarray(np.random.default_rng(5).integers(0, 256, (70, 110, 3), dtype=np.uint8))
CROP = Image.fromarray(np.random.default_rng(6).integers(0, 256, (90, 40, 3), dtype=np.uint8))


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "instructblip", "qwen2_5_vl", "qwen3_vl"])
def test_continuing_from_the_prefix_answers_as_a_fresh_pass(family, tiny_server):
    model = tiny_server(family)
    stage1 = model.answer([GLOBAL], QUESTION, LIMITS, with_attention=True, keep_prefix=True)
    assert stage1.prefix is not None and stage1.prefix.length == model.prefix_length(model.inputs([GLOBAL], QUESTION))

    # The language model sees only the positions after the prefix.
    seen = []
    hook = model.model.get_decoder().layers[0].register_forward_hook(lambda _m, args, _o: seen.append(args[0].shape[1]))
    try:
        for images in ([GLOBAL, CROP], [GLOBAL, CROP, GLOBAL, CROP, CROP]):
            seen.clear()
            reused = model.answer(images, QUESTION, LIMITS, with_attention=False, prefix=stage1.prefix)
            prompt = model.inputs(images, QUESTION)["input_ids"].shape[1]
            assert seen[0] == prompt - stage1.prefix.length
            fresh = model.answer(images, QUESTION, LIMITS, with_attention=False)
            assert seen[len(reused.logits)] == prompt
            assert reused.text == fresh.text
            assert torch.equal(reused.logits.argmax(-1), fresh.logits.argmax(-1))
            assert torch.allclose(reused.logits, fresh.logits, atol=1e-4)
            assert sum(reused.flops.values()) < sum(fresh.flops.values())
    finally:
        hook.remove()

    generic_reused, flops_reused = model.attention(GLOBAL, GENERIC_PROMPT, prefix=stage1.prefix)
    generic_fresh, flops_fresh = model.attention(GLOBAL, GENERIC_PROMPT)
    np.testing.assert_allclose(generic_reused, generic_fresh, atol=1e-6, rtol=0)
    if family == "instructblip":  # its image slots depend on the instruction: no shared prefix with the generic prompt
        assert flops_reused == flops_fresh
    else:
        assert sum(flops_reused.values()) < sum(flops_fresh.values()) / 2

    # Another first image (same token ids: the pixels differ) or, for InstructBLIP, another
    # instruction: the prefix does not match and is not reused.
    assert model.reusable(stage1.prefix, model.inputs([GLOBAL.rotate(180), CROP], QUESTION)) is None
    assert model.reusable(stage1.prefix, model.inputs([GLOBAL, CROP], QUESTION)) is stage1.prefix
    assert ((model.reusable(stage1.prefix, model.inputs([GLOBAL, CROP], "another question")) is None)
            == (family == "instructblip"))


def test_reuse_off_recomputes_and_records_equal_all_but_flops(tiny_server):
    settings = Method(Policy("always"), Codec.parse("png"))
    outcomes = {}
    for reuse in (True, False):
        model = tiny_server("llava", reuse_prefix=reuse)
        outcomes[reuse] = run_one(model, [GLOBAL], QUESTION, method=settings, limits=LIMITS, key="t/0",
                                     scope="t", caches=RunCaches())
    on, off = vars(outcomes[True]), vars(outcomes[False])
    for key in ("answer", "answer_stage1", "answer_stage2", "roi", "bytes_total", "scores", "retransmitted"):
        assert on[key] == off[key], key
    assert {k: v for k, v in on["flops"].items() if k not in ("stage2", "generic")} == \
        {k: v for k, v in off["flops"].items() if k not in ("stage2", "generic")}
    assert on["flops"]["stage2"] < off["flops"]["stage2"] and on["flops"]["generic"] < off["flops"]["generic"]


def test_reuse_prefix_must_be_a_boolean(tiny_llava_path, tmp_path):
    from model_adapters.llava import CollabLlava
    with pytest.raises(ValueError, match="reuse_prefix must be true or false"):
        CollabLlava(pretrained=tiny_llava_path, records_dir=str(tmp_path), reuse_prefix="sometimes")
