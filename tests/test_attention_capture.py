"""Maps without eager attention: the adapters run SDPA and probe one row; the maps and
answers equal those of the same weights loaded with eager attention and read from
``output_attentions`` (how the adapters worked before), for every family."""
import numpy as np
import pytest
import torch
from PIL import Image

from collab_eval.pipeline import GENERIC_PROMPT, Limits
from model_adapters.attention_capture import KERNEL, attention_probs

QUESTION = "what is the number on the sign ?"
LIMITS = Limits(max_new_tokens=6)
IMAGE = Image.fromarray(np.random.default_rng(5).integers(0, 256, (70, 110, 3), dtype=np.uint8))


def test_attention_rows_match_a_written_out_softmax():
    """GQA (4 query heads on 2 key/value heads), a boolean mask and an additive one."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 4, 3, 8, generator=g), torch.randn(1, 2, 5, 8, generator=g)
    keep = torch.tensor([True, False, True, True, True]).expand(1, 1, 3, 5)
    expected = []
    for h in range(4):
        scores = q[0, h] @ k[0, h // 2].T * 0.3
        scores[:, 1] = float("-inf")
        expected.append(scores.softmax(-1))
    expected = torch.stack(expected).mean(0)
    assert torch.allclose(attention_probs(q, k, keep, 0.3)[0].mean(0), expected, atol=1e-6)
    additive = torch.zeros(1, 1, 3, 5).masked_fill(~keep, torch.finfo(torch.float32).min)
    assert torch.allclose(attention_probs(q, k, additive, 0.3)[0].mean(0), expected, atol=1e-6)
    assert torch.allclose(attention_probs(q[:, :, -1:], k, keep, 0.3)[0, :, 0].mean(0), expected[-1], atol=1e-6)


@torch.inference_mode()
def eager_map(model, prompt):
    """The map as read from eager attention's output_attentions (InstructBLIP: through the
    Q-Former's cross-attentions, also eager), and the greedy tokens."""
    inputs = model.inputs([IMAGE], prompt)
    out = model.generate(inputs, max_new_tokens=LIMITS.max_new_tokens, do_sample=False, num_beams=1,
                         output_logits=True, output_attentions=True, return_dict_in_generate=True)
    row = out.attentions[0][model.layer][0, :, -1, :].float().mean(dim=0)
    row = row[model.image_token_positions(inputs, 0)].numpy()
    if hasattr(model, "qformer_layer"):
        m = model.model
        embeds = m.vision_model(pixel_values=inputs["pixel_values"]).last_hidden_state
        queries = m.query_tokens.expand(embeds.shape[0], -1, -1)
        cross = m.qformer(input_ids=inputs["qformer_input_ids"],
                          attention_mask=torch.cat([torch.ones(queries.shape[:-1], dtype=torch.long),
                                                    inputs["qformer_attention_mask"]], dim=1),
                          query_embeds=queries, encoder_hidden_states=embeds, output_attentions=True,
                          encoder_attention_mask=torch.ones(embeds.shape[:-1], dtype=torch.long)).cross_attentions
        grid = model.query_patch_map(row, cross[model.qformer_layer][0].float().mean(dim=0))
    else:
        grid = model.patch_grid(row, inputs, image_index=0)
    logits = torch.stack([step[0] for step in out.logits])
    return grid, logits


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "instructblip", "qwen2_5_vl", "qwen3_vl"])
def test_sdpa_probes_equal_eager_maps_and_answers(family, tiny_server):
    sdpa = tiny_server(family)
    eager = tiny_server(family, fresh=True)
    eager.model.set_attn_implementation("eager")
    assert sdpa.model.config._attn_implementation == KERNEL
    assert eager.model.config.get_text_config()._attn_implementation == "eager"

    stage1 = sdpa.answer([IMAGE], QUESTION, LIMITS, with_attention=True)
    grid, logits = eager_map(eager, QUESTION)
    assert stage1.attentions[0].shape == grid.shape and grid.size > 1
    np.testing.assert_allclose(stage1.attentions[0], grid, atol=1e-5, rtol=0)
    assert torch.equal(stage1.logits.argmax(-1), logits.argmax(-1))
    assert torch.allclose(stage1.logits, logits, atol=1e-4)
    assert stage1.text == eager.answer([IMAGE], QUESTION, LIMITS, with_attention=False).text

    # The generic-prompt pass stops inside the map layer: same map as a full eager pass.
    generic, _ = sdpa.attention(IMAGE, GENERIC_PROMPT)
    np.testing.assert_allclose(generic, eager_map(eager, GENERIC_PROMPT)[0], atol=1e-5, rtol=0)
    assert not np.allclose(generic, stage1.attentions[0])  # the prompt matters: not a constant map

    # Probes need the adapters' kernel: under any other, a map is a clear error, not a silent wrong one.
    with pytest.raises(RuntimeError, match="never called"):
        eager.answer([IMAGE], QUESTION, LIMITS, with_attention=True)
