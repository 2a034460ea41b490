"""Tiny random-weight checkpoints of the real transformers classes, built offline.

They exist so that tests and the default demo run the same code paths as a real
checkpoint (processor, chat template, generate, attentions) in seconds on a CPU.
Their answers are noise: they test plumbing, not accuracy.
"""
from __future__ import annotations

from pathlib import Path

import torch

# LLaVA-1.5's own chat template (llava-hf), so the tiny model is prompted exactly as the real one.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

_CORPUS = [
    "USER: ASSISTANT: what is the number on the sign ? answer the question using a single word or phrase .",
    "is there a red square in the image ? yes no write a general description of the image .",
    "reference ocr token : the a of to in is it that on with as for was at by be this from",
    "0 1 2 3 4 5 6 7 8 9 10 stop cafe open exit left right up down red green blue black white",
]


def train_tokenizer(special: list[str], vocab_size: int = 400, corpus: list[str] | None = None):
    """A word-piece-free BPE tokenizer trained on a small corpus (``_CORPUS`` unless one is
    given), wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>", *special],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator((_CORPUS if corpus is None else corpus) * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"} if "<image>" in special else None,
    )


def build_tiny_llava(out_dir: str | Path, image_size: int = 64, patch_size: int = 8, seed: int = 0,
                     vision: dict | None = None, text: dict | None = None, vocab_size: int | None = None) -> Path:
    """Write a tiny LlavaForConditionalGeneration + LlavaProcessor to ``out_dir``
    (``vision``/``text``: config fields that replace the tiny widths and depths;
    ``vocab_size``: the language model's, above the tokenizer's own)."""
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    tokenizer = train_tokenizer(["<image>"])
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    vision = CLIPVisionConfig(**{
        **dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, projection_dim=32),
        **(vision or {}), "image_size": image_size, "patch_size": patch_size})
    text = LlamaConfig(**{
        **dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=1024),
        **(text or {}), "vocab_size": max(vocab_size or 0, len(tokenizer)),
        "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id})
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=image_token_id,
        vision_feature_layer=-2, vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        do_center_crop=True, do_resize=True,
    )
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def build_geometry_llava(out_dir: str | Path, seed: int = 0) -> Path:
    """A random-weight LLaVA with LLaVA-1.5's image geometry (CLIP at 336 px, 14-pixel
    patches: 576 image tokens per image, as llava-1.5-7b) and LLaVA-1.5's vocabulary size,
    at widths and depths a CPU runs (CLIP width 1024 with 2 layers, Llama width 1024 with 4
    layers; 145 M parameters): the timing benchmark's model, so that prompt lengths, and
    what they cost, are those of the real checkpoint."""
    return build_tiny_llava(
        out_dir, image_size=336, patch_size=14, seed=seed, vocab_size=32064,
        vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=2, num_attention_heads=16,
                    projection_dim=768),
        text=dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=4, num_attention_heads=16,
                  num_key_value_heads=16, max_position_embeddings=4096))


# LLaVA-NeXT (vicuna) as llava-hf writes its chat template, accepting a message's content as a
# list of image/text entries (what collab_llava_next sends) or as one string (what lmms-eval's
# llava_hf sends: "<image>\nquestion"); both render the same prompt for one image.
LLAVA_NEXT_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def llava_next_pinpoints(tile: int) -> list[list[int]]:
    """llava-v1.6's image_grid_pinpoints (336-px tiles: 336x672 ... 672x672, 1008x336), scaled to ``tile``."""
    return [[tile * h, tile * w] for h, w in ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))]


def build_tiny_llava_next(out_dir: str | Path, tile: int = 112, patch_size: int = 14, seed: int = 0) -> Path:
    """Write a tiny LlavaNextForConditionalGeneration + LlavaNextProcessor to ``out_dir``:
    llava-v1.6's geometry scaled by 1/3 (112-px base view and tiles, pinpoints of 112 to
    336 px, 14-px patches: 64 + 16 x 16 + 16 = 336 image tokens for a square image),
    CLIP read at its second-to-last layer with the class token dropped, as the 7B."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    tokenizer = train_tokenizer(["<image>"])
    pinpoints = llava_next_pinpoints(tile)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              projection_dim=32, image_size=tile, patch_size=patch_size)
    text = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=4096, vocab_size=len(tokenizer),
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)
    config = LlavaNextConfig(vision_config=vision, text_config=text, image_token_index=tokenizer.convert_tokens_to_ids(
        "<image>"), vision_feature_layer=-2, vision_feature_select_strategy="default", image_grid_pinpoints=pinpoints,
        projector_hidden_act="gelu")
    model = LlavaNextForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    image_processor = LlavaNextImageProcessor(size={"shortest_edge": tile}, crop_size={"height": tile, "width": tile},
                                              image_grid_pinpoints=pinpoints)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   chat_template=LLAVA_NEXT_CHAT_TEMPLATE)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


# Qwen2-VL-Instruct's own chat template (Qwen/Qwen2-VL-*-Instruct), so the tiny model is prompted as the real one.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN2_VL_SPECIAL = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                    "<|image_pad|>", "<|video_pad|>"]


def build_tiny_qwen2_vl(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny Qwen2VLForConditionalGeneration + Qwen2VLProcessor to ``out_dir``.

    The vision geometry is the real one (14-pixel patches, 2x2 merge, 2 temporal
    patches), so the pixel budget, smart_resize and token bookkeeping are exercised as
    for Qwen2-VL-2B/7B; only the widths and depths are tiny.
    """
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    tokenizer = train_tokenizer(QWEN2_VL_SPECIAL)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN2_VL_SPECIAL}
    config = Qwen2VLConfig(
        vision_config=dict(depth=2, embed_dim=32, hidden_size=64, mlp_ratio=2, num_heads=2, in_channels=3,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        text_config=dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=ids["<|im_end|>"],
                         pad_token_id=tokenizer.pad_token_id),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    model = Qwen2VLForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = [ids["<|im_end|>"], tokenizer.eos_token_id]
    image_processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=28 * 28 * 1280,
                                            patch_size=14, merge_size=2, temporal_patch_size=2)
    processor = Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                 video_processor=Qwen2VLVideoProcessor(), chat_template=QWEN2_VL_CHAT_TEMPLATE)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def build_tiny_instructblip(out_dir: str | Path, image_size: int = 224, patch_size: int = 14, seed: int = 0) -> Path:
    """Write a tiny InstructBlipForConditionalGeneration (Llama language model, as in
    instructblip-vicuna-7b) + InstructBlipProcessor to ``out_dir``.

    The image geometry is the real one (224x224 squashed, 14-pixel patches, 32 query
    tokens); the Q-Former has cross-attention every second layer, as the real one.
    """
    from tokenizers.processors import TemplateProcessing
    from transformers import (
        BlipImageProcessor,
        InstructBlipConfig,
        InstructBlipForConditionalGeneration,
        InstructBlipProcessor,
        InstructBlipQFormerConfig,
        InstructBlipVisionConfig,
        LlamaConfig,
    )

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    tokenizer = train_tokenizer([])
    # Vicuna's tokenizer starts every text with <s>; the processor puts the query tokens before it.
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tokenizer.bos_token_id)])
    qformer_tokenizer = train_tokenizer([])
    image_processor = BlipImageProcessor(size={"height": image_size, "width": image_size}, do_resize=True)
    # The processor adds the <image> token to the tokenizer, as for the released checkpoint.
    processor = InstructBlipProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                      qformer_tokenizer=qformer_tokenizer, num_query_tokens=32)
    vision = InstructBlipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, image_size=image_size, patch_size=patch_size)
    qformer = InstructBlipQFormerConfig(vocab_size=len(qformer_tokenizer), hidden_size=32, num_hidden_layers=4,
                                        num_attention_heads=2, intermediate_size=64, cross_attention_frequency=2,
                                        max_position_embeddings=512, pad_token_id=qformer_tokenizer.pad_token_id)
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = InstructBlipConfig(vision_config=vision, qformer_config=qformer, text_config=text,
                                num_query_tokens=32, image_token_index=tokenizer.convert_tokens_to_ids("<image>"))
    model = InstructBlipForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def zero_blank_tokens(model, tokenizer) -> list[int]:
    """Zero the (tied) embedding rows of the tokens that decode to nothing visible (special
    tokens, whitespace): a random tiny Qwen model otherwise answers with newlines or special
    tokens, which decode to "" (DESIGN.md). Their logits are then exactly 0 while the others'
    maximum is positive, so greedy answers are visible, varied text. Returns the ids zeroed."""
    blank = [i for i in range(len(tokenizer)) if not tokenizer.decode([i], skip_special_tokens=True).strip()]
    embeddings = model.get_input_embeddings().weight
    if model.get_output_embeddings().weight.data_ptr() != embeddings.data_ptr():
        raise ValueError("zero_blank_tokens needs tied input and output embeddings")
    with torch.no_grad():
        embeddings[blank] = 0.0
    return blank


# Weights drawn 10x wider than transformers' default 0.02: at 0.02 the tied embedding dominates
# the residual stream and the model repeats one token whatever the image; at 0.2 what it
# generates changes with the image and the question, so equal answers say equal inputs.
RANDOM_INIT = 0.2


def qwen_tokenizer(special: list[str]):
    """A tiny tokenizer with Qwen's special tokens whose end-of-sequence token is
    ``<|im_end|>``, as the released Qwen2.5-VL and Qwen3-VL Instruct tokenizers (lmms-eval's
    qwen adapters stop at ``tokenizer.eos_token_id``)."""
    tokenizer = train_tokenizer(special)
    tokenizer.eos_token = "<|im_end|>"
    return tokenizer


def build_tiny_qwen2_5_vl(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny Qwen2_5_VLForConditionalGeneration + Qwen2_5_VLProcessor to ``out_dir``.

    The vision geometry is the released one (14-pixel patches, 2x2 merge, 2 temporal
    patches, 112-pixel attention windows: 4 x 4 language tokens), with window attention in
    blocks 0 and 2 and full attention in blocks 1 and 3 (the released 32-block tower has full
    attention in 7, 15, 23, 31); only the widths and depths are tiny.
    """
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    tokenizer = qwen_tokenizer(QWEN2_VL_SPECIAL)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN2_VL_SPECIAL}
    config = Qwen2_5_VLConfig(
        vision_config=dict(depth=4, hidden_size=32, intermediate_size=64, num_heads=2, in_channels=3,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                           fullatt_block_indexes=[1, 3], out_hidden_size=64, initializer_range=RANDOM_INIT),
        text_config=dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=ids["<|im_end|>"],
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True, initializer_range=RANDOM_INIT),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True, initializer_range=RANDOM_INIT,
    )
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    zero_blank_tokens(model, tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = [ids["<|im_end|>"], tokenizer.convert_tokens_to_ids("</s>")]
    image_processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=28 * 28 * 1280,
                                            patch_size=14, merge_size=2, temporal_patch_size=2)
    processor = Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                    video_processor=Qwen2VLVideoProcessor(), chat_template=QWEN2_VL_CHAT_TEMPLATE)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


# Qwen3-VL-Instruct's chat template (Qwen/Qwen3-VL-*-Instruct) for images and text: unlike
# Qwen2-VL's it adds no default system prompt; images are <|vision_start|><|image_pad|><|vision_end|>.
QWEN3_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_qwen3_vl(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny Qwen3VLForConditionalGeneration + Qwen3VLProcessor to ``out_dir``.

    The vision geometry is the released one (16-pixel patches, 2x2 merge, 2 temporal
    patches, the processor's mean and std of 0.5); DeepStack feeds the outputs of vision
    blocks 1 and 2 (of 4) into the first two decoder layers, as the released 27-block tower
    feeds blocks 8, 16, 24 into the first three; the language model has its own head_dim
    and interleaved M-RoPE. Only the widths and depths are tiny.
    """
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    tokenizer = qwen_tokenizer(QWEN2_VL_SPECIAL)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN2_VL_SPECIAL}
    config = Qwen3VLConfig(
        vision_config=dict(depth=4, hidden_size=32, intermediate_size=64, num_heads=2, in_channels=3,
                           patch_size=16, spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=64,
                           num_position_embeddings=256, deepstack_visual_indexes=[1, 2],
                           initializer_range=RANDOM_INIT),
        text_config=dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [2, 3, 3],
                                          "mrope_interleaved": True},
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=ids["<|im_end|>"],
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True, initializer_range=RANDOM_INIT),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True, initializer_range=RANDOM_INIT,
    )
    model = Qwen3VLForConditionalGeneration(config).eval()
    zero_blank_tokens(model, tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = [ids["<|im_end|>"], tokenizer.convert_tokens_to_ids("</s>")]
    image_processor = Qwen2VLImageProcessor(min_pixels=64 * 64, max_pixels=32 * 32 * 1280, patch_size=16,
                                            merge_size=2, temporal_patch_size=2,
                                            image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    processor = Qwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                 video_processor=Qwen3VLVideoProcessor(patch_size=16),
                                 chat_template=QWEN3_VL_CHAT_TEMPLATE)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
