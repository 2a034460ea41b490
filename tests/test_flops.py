"""The analytic FLOP counts the adapter records agree with what torch actually executes.

Each test wraps one real adapter call (``answer`` or ``attention``, exactly as the
pipeline makes them) in ``torch.utils.flop_counter.FlopCounterMode`` and splits the
counted FLOPs per part by module: vision tower, projector, language model + LM head.
A forward hook on the whole model snapshots the running counts after every forward
call, so the first call (prefill) is told apart from the one-token decode steps.
Every part must agree within 2%.
"""
import copy

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from collab_eval.pipeline import GENERIC_PROMPT

TOLERANCE = 0.02
MAX_NEW_TOKENS = 8
QUESTION = "what is the number on the sign ?"

# On CPU the fused SDPA kernel counts zero unless mapped (see DESIGN.md). The adapters use
# eager attention, but if anything ever ran under SDPA its FLOPs must still be counted.
# Custom formulas receive the shapes of the op's arguments.
_SDPA_CPU = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
             lambda q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs: sdpa_flop_count(q_shape, k_shape, v_shape)}


@pytest.fixture(scope="module")
def adapter(tiny_llava_path, tmp_path_factory):
    from model_adapters.llava import CollabLlava
    model = CollabLlava(pretrained=tiny_llava_path, records_dir=str(tmp_path_factory.mktemp("records")),
                        policy="always", max_new_tokens=MAX_NEW_TOKENS)
    model._gen_kwargs = {}  # as run_one sets them
    return model


def noise_image(width, height, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


WIDE = noise_image(97, 61, seed=1)  # non-square: the processor resizes the short edge and centre-crops
TALL = noise_image(40, 90, seed=2)


def _total(counts, name):
    return sum(counts.get(name, {}).values())


def _module_total(counts, root, attr):
    """Counted FLOPs inside submodule ``attr`` of ``root``. The module tracker names a
    module by its path under the root model, or by its class name when it is entered
    outside the root's forward (generate encodes images before the first forward)."""
    names = {f"{type(root).__name__}.{attr}", type(root.get_submodule(attr)).__name__}
    return sum(_total(counts, name) for name in names)


def counted(adapter, call):
    """Run ``call`` under FlopCounterMode; return its result, the counted FLOPs per
    part, and the number of forward calls of the model."""
    model = adapter.model
    snapshots = []
    with FlopCounterMode(display=False, custom_mapping=_SDPA_CPU) as counter:
        hook = model.register_forward_hook(lambda *_: snapshots.append(copy.deepcopy(counter.get_flop_counts())))
        try:
            result = call()
        finally:
            hook.remove()
    final = counter.get_flop_counts()

    def language(counts):
        return _module_total(counts, model, "model.language_model") + _module_total(counts, model, "lm_head")

    parts = {
        "vision": _module_total(final, model, "model.vision_tower"),
        "projector": _module_total(final, model, "model.multi_modal_projector"),
        "prefill": language(snapshots[0]),
        "decode": language(final) - language(snapshots[0]),
    }
    # Nothing escapes the split: every counted FLOP belongs to exactly one part.
    assert sum(parts.values()) == _total(final, "Global"), (parts, _total(final, "Global"))
    # Images are encoded once, before or inside the first forward, never while decoding.
    assert _module_total(snapshots[0], model, "model.vision_tower") == parts["vision"]
    return result, parts, len(snapshots)


def assert_agree(analytic: dict, measured: dict):
    assert analytic.keys() == measured.keys()
    for part, count in measured.items():
        assert abs(analytic[part] - count) <= TOLERANCE * count, (
            f"{part}: analytic {analytic[part]:,} vs counted {count:,} "
            f"(ratio {analytic[part] / count if count else float('inf'):.4f})")


def test_stage1_answer_parts(adapter):
    answer, measured, forwards = counted(adapter, lambda: adapter.answer([WIDE], QUESTION, with_attention=True))
    steps = len(answer.logits)
    assert forwards == steps >= 2  # one forward per generated token; decode is exercised
    assert all(measured[part] > 0 for part in ("vision", "projector", "prefill", "decode"))
    assert_agree(answer.flops, measured)


def test_generic_prompt_pass(adapter):
    (_, flops), measured, forwards = counted(adapter, lambda: adapter.attention(WIDE, GENERIC_PROMPT))
    assert forwards == 1 and measured["decode"] == 0
    assert_agree(flops, measured)
    # The pipeline records the generic pass as one number: the sum of its parts.
    assert_agree({"generic": sum(flops.values())}, {"generic": sum(measured.values())})


def test_stage2_two_images(adapter):
    answer, measured, forwards = counted(adapter, lambda: adapter.answer([WIDE, TALL], QUESTION, with_attention=False))
    assert forwards == len(answer.logits)
    _, one_image, _ = counted(adapter, lambda: adapter.attention(WIDE, GENERIC_PROMPT))
    assert measured["vision"] == 2 * one_image["vision"]  # both images went through the encoder
    assert_agree(answer.flops, measured)
    # The pipeline records stage 2 as one number: the sum of its parts.
    assert_agree({"stage2": sum(answer.flops.values())}, {"stage2": sum(measured.values())})


def test_generation_stopped_early_at_eos(adapter):
    """Make a token the model is about to generate its EOS, so generation stops before
    max_new_tokens: decode must count only the steps that ran."""
    tokens = adapter.answer([WIDE], QUESTION, with_attention=False).logits.argmax(-1).tolist()
    # The first token not seen before it: greedy decoding stops right after producing it.
    stop = next((k for k in range(1, len(tokens)) if tokens[k] not in tokens[:k]), 0)
    config = adapter.model.generation_config
    saved = config.eos_token_id
    config.eos_token_id = tokens[stop]
    try:
        answer, measured, forwards = counted(adapter, lambda: adapter.answer([WIDE], QUESTION, with_attention=False))
    finally:
        config.eos_token_id = saved
    assert forwards == len(answer.logits) == stop + 1 < MAX_NEW_TOKENS
    assert_agree(answer.flops, measured)
