"""The analytic FLOP counts the adapters record agree with what torch actually executes,
per part, within 2%, for every family.

Each test wraps one real adapter call (``answer`` or ``attention``, exactly as the pipeline
makes them) in ``torch.utils.flop_counter.FlopCounterMode`` and splits the counted FLOPs by
module into the recorded parts (vision encoder, projector/connector, language model + LM
head). A module's counts are found under its path in the model or under its class name,
whether it ran inside the model's forward or on its own (generate encodes images before the
first forward; InstructBLIP's adapter runs the vision encoder and the Q-Former itself). A
forward hook on the language model snapshots the counts after every forward call: the first
is the prefill, the rest decode.
"""
import copy
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from collab_eval.server_contract import GENERIC_PROMPT, Limits
from tests.helpers import FAMILIES

TOLERANCE = 0.02
MAX_NEW_TOKENS = 8
QUESTION = "what is the number on the sign ?"
LIMITS = Limits(max_new_tokens=MAX_NEW_TOKENS)


@dataclass
class Parts:
    """Where each recorded part runs, as submodule paths of the transformers model."""
    vision: tuple[str, ...]
    vision_minus: tuple[str, ...]  # inside vision, but counted as projector
    projector: tuple[str, ...]
    language: tuple[str, ...]  # the per-token part: decoder and LM head
    stepper: str  # the module whose forward runs once per generated token


# On CPU the fused SDPA kernel counts zero unless mapped (see DESIGN.md); the adapters run SDPA.
_SDPA_CPU = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
             lambda q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs:
             sdpa_flop_count(q_shape, k_shape, v_shape)}

QWEN3_VL_MERGERS = ("model.visual.merger", "model.visual.deepstack_merger_list.0",
                    "model.visual.deepstack_merger_list.1")

PARTS = {
    "llava": Parts(vision=("model.vision_tower",), vision_minus=(), projector=("model.multi_modal_projector",),
                   language=("model.language_model", "lm_head"), stepper=""),
    # LLaVA-NeXT: the same towers as LLaVA-1.5, run over the base view and every tile.
    "llava_next": Parts(vision=("model.vision_tower",), vision_minus=(), projector=("model.multi_modal_projector",),
                        language=("model.language_model", "lm_head"), stepper=""),
    "qwen2_vl": Parts(vision=("model.visual",), vision_minus=("model.visual.merger",),
                      projector=("model.visual.merger",), language=("model.language_model", "lm_head"),
                      stepper=""),
    "qwen2_5_vl": Parts(vision=("model.visual",), vision_minus=("model.visual.merger",),
                        projector=("model.visual.merger",), language=("model.language_model", "lm_head"),
                        stepper=""),
    # Qwen3-VL's DeepStack mergers (one per level; the tiny checkpoint has two) are connector too.
    "qwen3_vl": Parts(vision=("model.visual",), vision_minus=QWEN3_VL_MERGERS, projector=QWEN3_VL_MERGERS,
                      language=("model.language_model", "lm_head"), stepper=""),
    # The Q-Former and the language projection are InstructBLIP's connector.
    "instructblip": Parts(vision=("vision_model",), vision_minus=(), projector=("qformer", "language_projection"),
                          language=("language_model",), stepper="language_model"),
}


def noise_image(width, height, seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


WIDE = noise_image(97, 61, seed=1)
TALL = noise_image(40, 90, seed=2)
SQUARE = noise_image(150, 150, seed=3)  # a different Qwen2-VL grid again


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tiny_server):
    # Every registered family is checked: a new one fails here until it names its parts.
    assert request.param in PARTS, f"family {request.param}: name its vision, connector and language modules in PARTS"
    return tiny_server(request.param), PARTS[request.param]


def tracker_names(model, path: str) -> set[str]:
    """The names FlopCounterMode may file a submodule's counts under: its path under the
    root model, or, when an ancestor first ran on its own (generate encodes images before
    the first forward; the InstructBLIP adapter runs its encoders itself), its path under
    that ancestor's class name."""
    parts = path.split(".")
    names = {".".join([type(model).__name__, *parts])}
    for i in range(len(parts)):
        ancestor = model.get_submodule(".".join(parts[:i + 1]))
        names.add(".".join([type(ancestor).__name__, *parts[i + 1:]]))
    return names


def counted(family, call):
    """Run ``call`` under FlopCounterMode; return its result, the counted FLOPs per part,
    and the number of forward calls of the language model."""
    adapter, parts = family
    model = adapter.model
    stepper = model.get_submodule(parts.stepper)
    snapshots = []
    with FlopCounterMode(display=False, custom_mapping=_SDPA_CPU) as counter:
        hook = stepper.register_forward_hook(lambda *_: snapshots.append(copy.deepcopy(counter.get_flop_counts())))
        try:
            result = call()
        finally:
            hook.remove()
    final = counter.get_flop_counts()

    def total(counts, paths):
        return sum(sum(counts.get(name, {}).values()) for path in paths for name in tracker_names(model, path))

    # A map-only pass stops inside a decoder layer: no forward completes, all of it is prefill.
    prefill = total(snapshots[0] if snapshots else final, parts.language)
    measured = {
        "vision": total(final, parts.vision) - total(final, parts.vision_minus),
        "projector": total(final, parts.projector),
        "prefill": prefill,
        "decode": total(final, parts.language) - prefill,
    }
    # Nothing escapes the split: every counted FLOP belongs to exactly one part.
    assert sum(measured.values()) == sum(final["Global"].values()), (measured, final["Global"])
    return result, measured, len(snapshots)


def assert_agree(analytic: dict, measured: dict):
    assert analytic.keys() == measured.keys()
    for part, count in measured.items():
        assert abs(analytic[part] - count) <= TOLERANCE * count, (
            f"{part}: analytic {analytic[part]:,} vs counted {count:,} "
            f"(ratio {analytic[part] / count if count else float('inf'):.4f})")


def test_stage1_answer_parts(family):
    answer, measured, forwards = counted(family,
                                         lambda: family[0].answer([WIDE], QUESTION, LIMITS, with_attention=True))
    assert forwards == len(answer.logits) >= 2  # one forward per generated token; decode is exercised
    assert all(measured[part] > 0 for part in ("vision", "projector", "prefill", "decode"))
    assert answer.attentions is not None and answer.attentions[0].size > 1
    assert_agree(answer.flops, measured)


def test_generic_prompt_pass(family):
    """The map-only pass stops inside the map layer: the layers after it are neither run nor counted."""
    adapter = family[0]
    (_, flops), measured, forwards = counted(family, lambda: adapter.attention(TALL, GENERIC_PROMPT))
    assert forwards == 0 and measured["decode"] == 0
    assert_agree(flops, measured)
    full = adapter.flops(adapter.inputs([TALL], GENERIC_PROMPT), generated=1)
    assert flops["prefill"] < full["prefill"] * (adapter.layer + 1) / adapter.language_config().num_hidden_layers


@pytest.mark.parametrize("images", [[WIDE, TALL], [WIDE, TALL, SQUARE, WIDE, TALL]], ids=["two", "five"])
def test_several_images_of_different_sizes(family, images):
    """Stage 2 (global + crop) and tiles (global + four tiles)."""
    answer, measured, forwards = counted(family,
                                         lambda: family[0].answer(images, QUESTION, LIMITS, with_attention=False))
    assert forwards == len(answer.logits)
    assert_agree(answer.flops, measured)


def test_generation_stopped_early_at_eos(family):
    """Make a token the model is about to generate its EOS: decode counts only the steps run."""
    adapter = family[0]
    tokens = adapter.answer([WIDE], QUESTION, LIMITS, with_attention=False).logits.argmax(-1).tolist()
    stop = next((k for k in range(1, len(tokens)) if tokens[k] not in tokens[:k]), None)
    if stop is None:
        pytest.skip(f"greedy answer repeats one token: {tokens}")
    config = adapter.model.generation_config
    saved = config.eos_token_id
    config.eos_token_id = tokens[stop]
    try:
        answer, measured, forwards = counted(family,
                                             lambda: adapter.answer([WIDE], QUESTION, LIMITS, with_attention=False))
    finally:
        config.eos_token_id = saved
    assert forwards == len(answer.logits) == stop + 1 < MAX_NEW_TOKENS
    assert_agree(answer.flops, measured)


@pytest.mark.parametrize("images", [[WIDE, TALL], [WIDE, TALL, SQUARE, WIDE, TALL]], ids=["two", "five"])
def test_stage2_from_stage1s_prefix(family, images):
    """Stage 2 continues from stage 1's cached prefix: what is computed (and counted)
    shrinks by the prefix's positions and, except InstructBLIP, the global image's encoding."""
    adapter = family[0]
    prefix = adapter.answer([WIDE], QUESTION, LIMITS, with_attention=False, keep_prefix=True).prefix
    answer, measured, forwards = counted(family, lambda: adapter.answer(images, QUESTION, LIMITS, with_attention=False,
                                                                        prefix=prefix))
    assert forwards == len(answer.logits)
    assert_agree(answer.flops, measured)
    fresh = adapter.answer(images, QUESTION, LIMITS, with_attention=False)
    assert answer.flops["prefill"] < fresh.flops["prefill"]


def test_generic_pass_from_stage1s_prefix(family):
    adapter = family[0]
    prefix = adapter.answer([TALL], QUESTION, LIMITS, with_attention=True, keep_prefix=True).prefix
    (_, flops), measured, _ = counted(family, lambda: adapter.attention(TALL, GENERIC_PROMPT, prefix=prefix))
    assert_agree(flops, measured)
