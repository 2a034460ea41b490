"""What each model family brings to the shared small-detail training script
(collab_eval.lab.train_smalldetail): its transformers classes at tiny widths, its framing
(the adapter's own pure function), how its prompt is tokenised, how its images become
tensors, and where its attention map comes from. Everything else is shared.

The three checkpoints have the same language model (128 wide, 4 layers), vision towers of 4
layers, 128 wide (Qwen2-VL's 2 layers, 64 wide, for its four times as many patches) and a 96 px encoder
input, so they differ where the real families differ: LLaVA
centre-crops to a square of 8 x 8 patches; Qwen2-VL keeps the aspect ratio inside a 96 x 96
pixel budget and merges 2 x 2 patches into one language token; InstructBLIP squashes to
96 x 96 and hands the language model 32 Q-Former query tokens, its map being the language
model's attention to the queries pushed through the Q-Former's cross-attention.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from collab_eval.edge import Box
from collab_eval.lab.tiny_checkpoints import (
    LLAVA_CHAT_TEMPLATE,
    QWEN2_VL_CHAT_TEMPLATE,
    QWEN2_VL_SPECIAL,
    train_tokenizer,
)

INPUT_SIDE = 96
WIDTH, DEPTH, HEADS = 128, 4, 4


@dataclass
class Batch:
    """One training batch: model inputs, the labels, each row's last prompt position, each
    row's number of images, and per image (row after row) its number of language tokens."""
    inputs: dict
    labels: torch.Tensor
    last: torch.Tensor
    images_per_row: list[int]
    image_tokens: list[int]

    def first_images(self) -> list[int]:
        """The index of each row's first image among all the batch's images."""
        return np.cumsum([0] + self.images_per_row[:-1]).tolist()


@dataclass
class Pass:
    """What a forward pass gives the training loop: the model output (loss, logits,
    hidden states), each row's patch map at the adapter's layer (None unless asked; a
    probability map over that row's first image's grid) and, for each place a digit head
    reads (Family.digit_places), each image's features there (tokens, width)."""
    output: object
    maps: list[torch.Tensor] | None
    features: list[list[torch.Tensor]]


class Family:
    name = ""
    vicrop_layer = (14, 32)
    digit_places = 1  # the projected image features the language model receives
    steps = 2500  # training steps of the shipped checkpoint
    attention: str | dict = "eager"  # the kernel while training: eager gives the weights the map loss needs
    # One auxiliary head reads the asked and the seen digit (train_smalldetail.Heads): existence
    # was then learned by about step 650-1000 where with a head each it came late and suddenly,
    # in one Qwen2-VL draw not within 1500 steps.
    shared_prompt_digit = True
    # Subnormal floats (small early gradients) run some CPU kernels ~100x slower: InstructBLIP's
    # first steps cost 1.33x LLaVA's, 1.16x with them flushed to zero (train_timing).
    flush_denormal = True
    warm_start: str | None = None  # a shipped checkpoint the model starts from (matching weights copied)
    # A recipe trained first, whose weights this one starts from (resolution grown in stages).
    earlier_stage: type[Family] | None = None
    lr = 2e-3

    def __init__(self, corpus: list[str]):
        self.prompt_cache: dict = {}  # (text, images) -> token ids before image tokens are expanded
        self.tokenizer = self.make_tokenizer(corpus)
        self.processor = self.make_processor()
        self.config = self.make_config()

    # ----- what a family defines ---------------------------------------------------
    def make_tokenizer(self, corpus):
        raise NotImplementedError

    def make_processor(self):
        raise NotImplementedError

    def make_config(self):
        raise NotImplementedError

    def frame(self, region: Box) -> tuple[Box, tuple[int, int]]:
        """The adapter's framing: what of ``region`` the encoder sees, and at what size."""
        raise NotImplementedError

    def pixels(self, images) -> list:
        """Each image as the processor makes it (stored in float16)."""
        raise NotImplementedError

    def prompt_ids(self, text: str, image_tokens: list[int]) -> list[int]:
        raise NotImplementedError

    def answer_ids(self, answer: str) -> list[int]:
        raise NotImplementedError

    def grid(self, pixels) -> tuple[int, int]:
        """The patch map's (rows, columns) for one image."""
        raise NotImplementedError

    def tokens(self, pixels) -> int:
        """Language tokens of one image."""
        return self.grid(pixels)[0] * self.grid(pixels)[1]

    def collate_images(self, images: list, texts: list[str]) -> dict:
        raise NotImplementedError

    def forward(self, model, batch: Batch, with_maps: bool, layer: int) -> Pass:
        """The model's own forward; the image features are read at the family's projector."""
        captured = {}
        hook = self.projector(model).register_forward_hook(lambda m, i, o: captured.__setitem__("f", o))
        try:
            out = model(**batch.inputs, labels=batch.labels, output_attentions=with_maps, output_hidden_states=True)
        finally:
            hook.remove()
        maps = (normalised(self.first_image_rows(self.lm_rows(out.attentions, batch, layer), batch))
                if with_maps else None)
        return Pass(out, maps, [self.per_image(captured["f"], batch)])

    def param_groups(self, model, lr: float) -> list[dict]:
        """The optimizer's parameter groups: one learning rate for the whole model."""
        return [{"params": list(model.parameters()), "lr": lr}]

    def projector(self, model) -> torch.nn.Module:
        """The module whose output is the image features the language model receives."""
        raise NotImplementedError

    def per_image(self, features, batch: Batch) -> list[torch.Tensor]:
        return list(features)

    # ----- shared ---------------------------------------------------------------------
    def attention_layer(self) -> int:
        num, den = self.vicrop_layer
        return self.config.text_config.num_hidden_layers * num // den

    def build_model(self, start=None):
        """The model, with the weights of the checkpoint ``start`` copied in where given (``warm_start``)."""
        model = self.new_model()
        if start is not None:
            warm_start(model, start, self.tokenizer)
        return model

    def new_model(self):
        model = self.model_class(self.config)
        model.set_attn_implementation(self.attention)
        return model

    def collate(self, rows, device="cpu") -> Batch:
        """rows: (text, answer_ids or [], pixel items). Right padding."""
        image_tokens = [self.tokens(px) for _, _, pxs in rows for px in pxs]
        prompts, at = [], 0
        for text, _, pxs in rows:
            prompts.append(self.prompt_ids(text, image_tokens[at:at + len(pxs)]))
            at += len(pxs)
        pad = self.tokenizer.pad_token_id
        length = max(len(p) + len(a) for p, (_, a, _) in zip(prompts, rows))
        ids = torch.full((len(rows), length), pad)
        labels = torch.full((len(rows), length), -100)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, (p, (_, a, _)) in enumerate(zip(prompts, rows)):
            seq = p + a
            ids[i, :len(seq)] = torch.tensor(seq)
            if a:
                labels[i, len(p):len(seq)] = torch.tensor(a)
            mask[i, :len(seq)] = 1
        images = [px for _, _, pxs in rows for px in pxs]
        texts = [text for text, _, pxs in rows for _ in pxs]
        inputs = {"input_ids": ids, "attention_mask": mask, **self.collate_images(images, texts)}
        inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}
        last = torch.tensor([len(p) - 1 for p in prompts], device=device)
        return Batch(inputs, labels.to(device), last, [len(pxs) for _, _, pxs in rows], image_tokens)

    def lm_rows(self, attentions, batch: Batch, layer: int) -> torch.Tensor:
        """Head-averaged attention of each row's last prompt token at ``layer``: (rows, length)."""
        att = attentions[layer].mean(1)
        return att[torch.arange(len(batch.last), device=batch.last.device), batch.last]

    def first_image_rows(self, rows, batch: Batch) -> list[torch.Tensor]:
        """Each row's attention to its first image's tokens."""
        image = batch.inputs["input_ids"] == self.config.image_token_id
        return [rows[r][image[r]][:batch.image_tokens[first]] for r, first in enumerate(batch.first_images())]

    def save(self, model, out, served: bool = True):
        """The model (attention kernel SDPA, the adapters' default) with its generation
        settings, and the processor; ``served``: then made what the shipped checkpoint serves
        (``serve``), else left as trained."""
        model.generation_config.pad_token_id = self.tokenizer.pad_token_id
        model.generation_config.eos_token_id = self.config.text_config.eos_token_id
        model.config._attn_implementation = "sdpa"
        model.save_pretrained(out)
        self.processor.save_pretrained(out)
        if served:
            self.serve(out)

    def serve(self, out) -> None:
        """Make the checkpoint in ``out`` serve as the recipe ships it: as trained, unless a
        family says otherwise."""


def normalised(rows: list[torch.Tensor]) -> list[torch.Tensor]:
    return [r / r.sum().clamp_min(1e-9) for r in rows]


# ----- LLaVA ------------------------------------------------------------------------------
class Llava(Family):
    name = "llava"
    patch = 12
    # The shipped checkpoint keeps the recipe it was trained with: a head each for the asked and
    # the seen digit, subnormals kept. It learns existence within its 2500 steps that way (seeds 0
    # and 1: existence gate +8.3 and +10.7 over random); with the shared head and flushing, seed 0
    # got +3.0 (its stage 1 was right on 61% of the large originals, leaving the crop less to add).
    shared_prompt_digit = False
    flush_denormal = False

    @property
    def model_class(self):
        from transformers import LlavaForConditionalGeneration
        return LlavaForConditionalGeneration

    def make_tokenizer(self, corpus):
        return train_tokenizer(["<image>"], vocab_size=512, corpus=corpus)

    def make_processor(self):
        from transformers import CLIPImageProcessor, LlavaProcessor
        image_processor = CLIPImageProcessor(size={"shortest_edge": INPUT_SIDE},
                                             crop_size={"height": INPUT_SIDE, "width": INPUT_SIDE},
                                             do_center_crop=True, do_resize=True)
        return LlavaProcessor(image_processor=image_processor, tokenizer=self.tokenizer, patch_size=self.patch,
                              vision_feature_select_strategy="default", num_additional_image_tokens=1,
                              chat_template=LLAVA_CHAT_TEMPLATE)

    def make_config(self):
        from transformers import CLIPVisionConfig, LlavaConfig
        tok = self.tokenizer
        vision = CLIPVisionConfig(hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=DEPTH,
                                  num_attention_heads=HEADS, image_size=INPUT_SIDE, patch_size=self.patch,
                                  projection_dim=WIDTH)
        return LlavaConfig(vision_config=vision, text_config=llama_config(tok),
                           image_token_index=tok.convert_tokens_to_ids("<image>"),
                           vision_feature_layer=-1, vision_feature_select_strategy="default",
                           projector_hidden_act="gelu")

    def frame(self, region):
        from model_adapters.llava import llava_frame
        return llava_frame(region, crop=(INPUT_SIDE, INPUT_SIDE), shortest_edge=INPUT_SIDE)

    def pixels(self, images):
        return list(self.processor.image_processor(images, return_tensors="pt")["pixel_values"].to(torch.float16))

    def grid(self, pixels):
        return INPUT_SIDE // self.patch, INPUT_SIDE // self.patch

    def prompt_ids(self, text, image_tokens):
        return chat_prompt_ids(self, text, image_tokens, "<image>")

    def answer_ids(self, answer):
        # After "ASSISTANT:" an answer starts with a space, as in LLaVA's training data.
        return self.tokenizer(" " + answer, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]

    def collate_images(self, images, texts):
        return {"pixel_values": torch.stack(images).float()}

    def projector(self, model):
        return model.model.multi_modal_projector  # (images, 64, width)


def warm_start(model, checkpoint, tokenizer) -> None:
    """Copy ``checkpoint``'s weights into ``model`` wherever the names match: equal shapes as
    they are; a ViT's patch embedding and position embeddings of another patch size resized
    (the kernel bilinearly, scaled by the area ratio so a flat image gives about the same
    features; the position grid
    bicubically, its class position kept). The two must share the tokenizer's vocabulary.
    Raises when a matching name cannot be copied."""
    from transformers import AutoModelForImageTextToText, AutoTokenizer
    if AutoTokenizer.from_pretrained(checkpoint).get_vocab() != tokenizer.get_vocab():
        raise ValueError(f"warm start from {checkpoint}: its tokenizer's vocabulary is not this family's")
    # Loaded by transformers' own class: it maps the saved names onto today's module names.
    source = AutoModelForImageTextToText.from_pretrained(checkpoint).state_dict()
    target = model.state_dict()
    copied = {}
    for name, tensor in source.items():
        if name not in target:
            continue
        want = target[name].shape
        if tensor.shape == want:
            copied[name] = tensor
        elif name.endswith("patch_embedding.weight") and tensor.shape[:2] == want[:2]:
            area = tensor.shape[-1] * tensor.shape[-2] / (want[-1] * want[-2])
            copied[name] = torch.nn.functional.interpolate(tensor.float(), size=tuple(want[-2:]), mode="bilinear",
                                                           align_corners=False) * area
        elif name.endswith("position_embedding.weight") and tensor.shape[1] == want[1]:
            side, new_side = int(round((tensor.shape[0] - 1) ** 0.5)), int(round((want[0] - 1) ** 0.5))
            grid = tensor[1:].float().T.reshape(1, -1, side, side)
            grid = torch.nn.functional.interpolate(grid, size=(new_side, new_side), mode="bicubic", align_corners=False)
            copied[name] = torch.cat([tensor[:1].float(), grid.reshape(want[1], -1).T])
        else:
            raise ValueError(f"warm start from {checkpoint}: {name} is {tuple(tensor.shape)}, the model's "
                             f"{tuple(want)}")
    model.load_state_dict({**target, **{k: v.to(target[k].dtype) for k, v in copied.items()}})


# ----- LLaVA-NeXT -----------------------------------------------------------------------------
class LlavaNextV16(Llava):
    """LLaVA-NeXT ("anyres") at llava-v1.6's own pinpoints: the first stage of the HD baseline
    (``LlavaNext``). LLaVA's towers at the same widths, with 96 px tiles and base view and
    llava-v1.6's pinpoints scaled to them (96 x 192 ... 192 x 192, 288 x 96); its map is the
    stitched tile grid, and the language model sees the base view's 36 tokens, then the grid's
    rows each with a newline. Its images are kept as the edge sent them (PIL) and put through
    the processor per batch: stored as tensors, their several views each would take several GB."""
    name = "llava-next-v1.6"
    # 16 px patches (6 x 6 per 96 px view): with LLaVA's 12 px a 192 x 192 global view was
    # 64 + 16 x 17 = 336 language tokens and 5 views of 64 patches, and a step cost over ten
    # times LLaVA's; at 16 px it is 36 + 12 x 13 = 192 tokens.
    patch = 16
    # The vision tower runs SDPA (the map comes from the language model, which stays eager).
    attention = {"vision_config": "sdpa", "text_config": "eager"}
    # A step costs 2.4x LLaVA's FLOPs with the smallest local windows and 3.1x with the
    # largest (FlopCounterMode, forward and backward of both passes): 1400 steps took 54 min on
    # 2 CPU threads; 900 from LLaVA's weights cost about 2,800 LLaVA steps' FLOPs.
    steps = 900
    shared_prompt_digit = True
    flush_denormal = True
    # Trained from scratch for 1400 steps (54 min) it read worse than smalldetail-llava (validation:
    # 0.21 from its global view against LLaVA's 0.43): the HD baseline must start where LLaVA-1.5
    # ended, as the released LLaVA-NeXT builds on LLaVA-1.5's towers and recipe.
    warm_start = "smalldetail-llava"

    @property
    def pinpoints(self) -> list[list[int]]:
        from collab_eval.lab.tiny_checkpoints import llava_next_pinpoints
        return llava_next_pinpoints(INPUT_SIDE)

    @property
    def model_class(self):
        from transformers import LlavaNextForConditionalGeneration
        return LlavaNextForConditionalGeneration

    def make_processor(self):
        from transformers import LlavaNextImageProcessor, LlavaNextProcessor

        from collab_eval.lab.tiny_checkpoints import LLAVA_NEXT_CHAT_TEMPLATE
        image_processor = LlavaNextImageProcessor(size={"shortest_edge": INPUT_SIDE},
                                                  crop_size={"height": INPUT_SIDE, "width": INPUT_SIDE},
                                                  image_grid_pinpoints=self.pinpoints)
        return LlavaNextProcessor(image_processor=image_processor, tokenizer=self.tokenizer, patch_size=self.patch,
                                  vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                  chat_template=LLAVA_NEXT_CHAT_TEMPLATE)

    def make_config(self):
        from transformers import LlavaNextConfig
        llava = super().make_config()
        return LlavaNextConfig(vision_config=llava.vision_config, text_config=llava.text_config,
                               image_token_index=llava.image_token_id, vision_feature_layer=-1,
                               vision_feature_select_strategy="default", image_grid_pinpoints=self.pinpoints,
                               projector_hidden_act="gelu")

    def frame(self, region):
        from model_adapters.llava_next import llava_next_frame
        return llava_next_frame(region, self.pinpoints)

    def layout(self, image):
        return self.layout_of((image.height, image.width))

    def pixels(self, images):
        return list(images)  # the sent images themselves; the processor runs per batch (collate_images)

    def grid(self, pixels):
        layout = self.layout(pixels)
        return layout.rows, layout.cols

    def tokens(self, pixels):
        return self.layout(pixels).tokens

    def collate_images(self, images, texts):
        out = self.processor.image_processor(images, return_tensors="pt")
        return {"pixel_values": out["pixel_values"], "image_sizes": out["image_sizes"]}

    def first_image_rows(self, rows, batch):
        """Each row's attention to its first image's stitched tile grid (base view and newlines dropped)."""
        image = batch.inputs["input_ids"] == self.config.image_token_id
        sizes = batch.inputs["image_sizes"].tolist()
        out = []
        for r, first in enumerate(batch.first_images()):
            layout = self.layout_of(sizes[first])
            tokens = rows[r][image[r]][:layout.tokens]
            out.append(tokens[layout.base ** 2:].reshape(layout.rows, layout.cols + 1)[:, :layout.cols].flatten())
        return out

    def layout_of(self, size):
        """The adapter's layout (model_adapters.llava_next.anyres_layout) of an image of ``size`` (h, w)."""
        from model_adapters.llava_next import anyres_layout
        return anyres_layout(size, self.pinpoints, INPUT_SIDE, self.patch)

    def projector(self, model):
        return model.model.multi_modal_projector  # (every view of every image, 64, width)

    def per_image(self, features, batch):
        """Each image's features: its base view's and tiles' patches together."""
        views = [self.layout_of(size).views for size in batch.inputs["image_sizes"].tolist()]
        return [f.flatten(0, 1) for f in torch.split(features, views)]


class LlavaNext(LlavaNextV16):
    """The HD baseline (``smalldetail-llava-next``): ``LlavaNextV16`` trained on at a grid of
    up to 3 x 3 tiles (pinpoints 96 x 192 ... 288 x 288) and served at up to 6 x 6 (576 px; see
    ``served_tiles_per_side``), against LLaVA's 96 px global view. llava-v1.6's pinpoints keep
    the released model's ratio to its tile (twice the side), not to the originals: TextVQA's
    ~1024 px originals are three times LLaVA-1.5's 336 px view and about 1.5 times LLaVA-NeXT's
    672, where the small-detail originals (448-1024 px) are 5-11 times the 96 px view and 2.3-5
    times a 192 px one. At 192 px a >= 10 px digit is in 2% more test scenes than at 96 (46.7%
    against 44.7%) and the first stage's never read 46.0% against smalldetail-llava's 49.3%; at
    288 px it is 74% of them, and this stage served at 3 x 3 reads 54.0%: it reads a digit of
    about one and a half 16 px patches or more (docs/smalldetail.md). Resolution grows in stages,
    as in the released Qwen2-VL's and InternVL's training: a step at 3 x 3 costs about 2.4x one
    at llava-v1.6's pinpoints (11-step runs in one process: 3.9 s against 1.65 s), so the first
    900 steps run at the smaller grid."""
    name = "llava-next"
    earlier_stage = LlavaNextV16
    warm_start = None
    steps = 250
    lr = 1e-3  # half the first stage's: it goes on from a model that reads
    tiles_per_side = 3
    # Served at every grid up to 6 x 6 tiles (576 px; the config's pinpoints): anyres runs each
    # 96 px tile through the tower at the scale it was trained at, so more tiles show small digits
    # larger without new training. A large original (448-1024 px) is then sent at up to 576 px,
    # 0.56x the largest one's side, as the released LLaVA-NeXT's 672 px is 0.66x TextVQA's 1024
    # (smaller originals: as they are; the edge never sends more pixels than it has). never on
    # smalldetail_read, the same weights (docs/measurements.md): 54.0% served at 3 x 3, 56.0% at
    # 4 x 4, 59.3% at 5 x 5, 64.0% at 6 x 6. Training at 6 x 6 (1,332 image tokens, 3.7x 3 x 3's)
    # would cost hours on the CPU; 250 more steps at 3 x 3 gave nothing (validation read 0.49
    # against 0.50).
    served_tiles_per_side = 6

    @property
    def pinpoints(self) -> list[list[int]]:
        return grid_pinpoints(self.tiles_per_side)

    def serve(self, out) -> None:
        """The config's and the processor's pinpoints: every grid up to ``served_tiles_per_side``
        (the saved files edited in place: the processor's save_pretrained would rewrite the
        tokenizer's settings too)."""
        served = grid_pinpoints(self.served_tiles_per_side)
        for name, section in (("config.json", None), ("processor_config.json", "image_processor")):
            path = Path(out) / name
            settings = json.loads(path.read_text())
            (settings if section is None else settings[section])["image_grid_pinpoints"] = served
            path.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")


def grid_pinpoints(tiles_per_side: int) -> list[list[int]]:
    """Every grid of 96 px tiles up to ``tiles_per_side`` on a side, one tile alone excepted."""
    side = range(1, tiles_per_side + 1)
    return [[INPUT_SIDE * h, INPUT_SIDE * w] for h in side for w in side if (h, w) != (1, 1)]


# ----- Qwen2-VL -----------------------------------------------------------------------------
class Qwen2VL(Family):
    name = "qwen2-vl"
    vicrop_layer = (22, 28)
    patch, merge = 6, 2  # 12 px per language token: 8 x 8 tokens for a square 96 x 96 image
    max_pixels = INPUT_SIDE * INPUT_SIDE
    min_pixels = 24 * 24
    # Its vision tower is half as wide as the others': with 6 px patches it sees four times
    # as many patches (as the real Qwen2-VL does per language token), and at full width it
    # trained at 1.25 s a step against LLaVA's 0.5 on 2 CPU threads.
    vision_width = WIDTH // 2
    # ... and two layers deep, run by SDPA (the map comes from the language model, which stays
    # eager): with its 9,412 patches per two-image batch the 4-layer eager tower made a step
    # cost 2.06x LLaVA's (train_timing); it reads as well by 1500 steps.
    vision_depth = 2
    attention = {"vision_config": "sdpa", "text_config": "eager"}
    steps = 1500

    @property
    def model_class(self):
        from transformers import Qwen2VLForConditionalGeneration
        return Qwen2VLForConditionalGeneration

    def make_tokenizer(self, corpus):
        return train_tokenizer(QWEN2_VL_SPECIAL, vocab_size=512, corpus=corpus)

    def make_processor(self):
        from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor
        image_processor = Qwen2VLImageProcessor(min_pixels=self.min_pixels, max_pixels=self.max_pixels,
                                                patch_size=self.patch, merge_size=self.merge, temporal_patch_size=2)
        return Qwen2VLProcessor(image_processor=image_processor, tokenizer=self.tokenizer,
                                video_processor=Qwen2VLVideoProcessor(), chat_template=QWEN2_VL_CHAT_TEMPLATE)

    def make_config(self):
        from transformers import Qwen2VLConfig
        tok = self.tokenizer
        ids = {token: tok.convert_tokens_to_ids(token) for token in QWEN2_VL_SPECIAL}
        head_dim = WIDTH // HEADS
        return Qwen2VLConfig(
            vision_config=dict(depth=self.vision_depth, embed_dim=self.vision_width, hidden_size=WIDTH, mlp_ratio=2,
                               num_heads=HEADS, in_channels=3, patch_size=self.patch, spatial_merge_size=self.merge,
                               temporal_patch_size=2),
            text_config=dict(vocab_size=len(tok), hidden_size=WIDTH, intermediate_size=2 * WIDTH,
                             num_hidden_layers=DEPTH, num_attention_heads=HEADS, num_key_value_heads=HEADS,
                             max_position_embeddings=1024,
                             rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                              "mrope_section": [head_dim // 8, 3 * head_dim // 16, 3 * head_dim // 16]},
                             bos_token_id=tok.bos_token_id, eos_token_id=ids["<|im_end|>"],
                             pad_token_id=tok.pad_token_id),
            image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])

    def frame(self, region):
        from model_adapters.qwen2_vl import qwen2_vl_frame
        return qwen2_vl_frame(region, self.patch * self.merge, self.min_pixels, self.max_pixels)

    def pixels(self, images):
        out = []
        for image in images:  # one at a time: each has its own grid
            p = self.processor.image_processor([image], return_tensors="pt")
            out.append((p["pixel_values"].to(torch.float16), p["image_grid_thw"][0]))
        return out

    def grid(self, pixels):
        _, h, w = pixels[1].tolist()
        return h // self.merge, w // self.merge

    def prompt_ids(self, text, image_tokens):
        return chat_prompt_ids(self, text, image_tokens, "<|image_pad|>")

    def answer_ids(self, answer):
        return self.tokenizer(answer, add_special_tokens=False)["input_ids"] + [self.config.text_config.eos_token_id]

    def collate_images(self, images, texts):
        return {"pixel_values": torch.cat([px for px, _ in images]).float(),
                "image_grid_thw": torch.stack([thw for _, thw in images])}

    def collate(self, rows, device="cpu"):
        batch = super().collate(rows, device)
        # As the processor marks them: 1 for image tokens (the M-RoPE positions need it).
        batch.inputs["mm_token_type_ids"] = (batch.inputs["input_ids"] == self.config.image_token_id).long()
        return batch

    def projector(self, model):
        return model.model.visual.merger  # (all images' merged cells, width)

    def per_image(self, features, batch):
        return list(torch.split(features, batch.image_tokens))


# ----- Qwen2.5-VL ---------------------------------------------------------------------------
class Qwen2_5VL(Qwen2VL):
    """Qwen2-VL's recipe on Qwen2.5-VL's classes: the same 6 px patches, 2 x 2 merge and 96 x 96
    budget, a tower of two blocks of which the first attends within windows of 4 x 4 language
    tokens (48 px; the 8 x 8 tokens of a square view are four windows) and the second over the
    whole image, as the released tower alternates windowed and full blocks."""
    name = "qwen2-5-vl"
    window_size = 48
    fullatt_block_indexes = [1]
    # At Qwen2-VL's 1500 steps its existence gate beat random at 50% by 2.7 points on the test
    # split (the bar: more than 5); at 2000, by 8.7 (validation: +6.3 and +8.7).
    steps = 2000

    @property
    def model_class(self):
        from transformers import Qwen2_5_VLForConditionalGeneration
        return Qwen2_5_VLForConditionalGeneration

    def make_processor(self):
        from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor
        image_processor = Qwen2VLImageProcessor(min_pixels=self.min_pixels, max_pixels=self.max_pixels,
                                                patch_size=self.patch, merge_size=self.merge, temporal_patch_size=2)
        return Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=self.tokenizer,
                                   video_processor=Qwen2VLVideoProcessor(), chat_template=QWEN2_VL_CHAT_TEMPLATE)

    def make_config(self):
        from transformers import Qwen2_5_VLConfig
        qwen2 = super().make_config()
        vision = dict(depth=self.vision_depth, hidden_size=self.vision_width, intermediate_size=2 * self.vision_width,
                      num_heads=HEADS, in_channels=3, patch_size=self.patch, spatial_merge_size=self.merge,
                      temporal_patch_size=2, window_size=self.window_size,
                      fullatt_block_indexes=self.fullatt_block_indexes, out_hidden_size=WIDTH)
        return Qwen2_5_VLConfig(vision_config=vision, text_config=qwen2.text_config.to_dict(),
                                image_token_id=qwen2.image_token_id, video_token_id=qwen2.video_token_id,
                                vision_start_token_id=qwen2.vision_start_token_id,
                                vision_end_token_id=qwen2.vision_end_token_id)


# ----- InstructBLIP -----------------------------------------------------------------------
class InstructBlip(Family):
    name = "instructblip"
    vicrop_layer = (15, 32)
    vicrop_qformer_layer = (2, 6)
    patch = 12
    queries = 32
    digit_places = 2  # the vision tower's patches and the projected query outputs
    # Its Q-Former (at a quarter of the rate) passes the digit on late: with a digit head each
    # for the asked and the seen digit it needed 3500 steps for the existence gate (+2.0 points
    # over random at 2500, +6.0 at 3500); with one shared head, 2200 (+6.3; lmms-eval, test splits).
    steps = 2200

    @property
    def model_class(self):
        from transformers import InstructBlipForConditionalGeneration
        return InstructBlipForConditionalGeneration

    def make_tokenizer(self, corpus):
        from tokenizers.processors import TemplateProcessing
        tok = train_tokenizer([], vocab_size=512, corpus=corpus)
        # Vicuna's tokenizer starts every text with <s>; the processor puts the query tokens before it.
        tok.backend_tokenizer.post_processor = TemplateProcessing(single="<s> $A",
                                                                  special_tokens=[("<s>", tok.bos_token_id)])
        self.qformer_tokenizer = train_tokenizer([], vocab_size=512, corpus=corpus)
        return tok

    def make_processor(self):
        from transformers import BlipImageProcessor, InstructBlipProcessor
        image_processor = BlipImageProcessor(size={"height": INPUT_SIDE, "width": INPUT_SIDE}, do_resize=True)
        # The processor adds the <image> token to the tokenizer, as for the released checkpoint.
        return InstructBlipProcessor(image_processor=image_processor, tokenizer=self.tokenizer,
                                     qformer_tokenizer=self.qformer_tokenizer, num_query_tokens=self.queries)

    def make_config(self):
        from transformers import InstructBlipConfig, InstructBlipQFormerConfig, InstructBlipVisionConfig
        tok = self.tokenizer
        vision = InstructBlipVisionConfig(hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=DEPTH,
                                          num_attention_heads=HEADS, image_size=INPUT_SIDE, patch_size=self.patch)
        # No dropout, as in the other two families' towers.
        qformer = InstructBlipQFormerConfig(vocab_size=len(self.qformer_tokenizer), hidden_size=WIDTH,
                                            num_hidden_layers=DEPTH, num_attention_heads=HEADS,
                                            intermediate_size=2 * WIDTH, cross_attention_frequency=2,
                                            encoder_hidden_size=WIDTH, max_position_embeddings=512,
                                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                            pad_token_id=self.qformer_tokenizer.pad_token_id)
        return InstructBlipConfig(vision_config=vision, qformer_config=qformer, text_config=llama_config(tok),
                                  num_query_tokens=self.queries,
                                  image_token_index=tok.convert_tokens_to_ids("<image>"))

    def new_model(self):
        """transformers starts the 32 query tokens at zero: identical queries with no position
        embedding stay identical under training (one query in effect; reading stayed at
        chance for 600 steps). The released model's queries come from BLIP-2's pretraining;
        here they start as the Q-Former's other weights do."""
        model = super().new_model()
        with torch.no_grad():
            model.query_tokens.normal_(0.0, self.config.qformer_config.initializer_range)
        return model

    def param_groups(self, model, lr):
        """The Q-Former (post-LN, as BERT) and its query tokens learn at a quarter of the
        rate of the rest (pre-LN towers, which train at the full rate)."""
        qformer = [*model.qformer.parameters(), model.query_tokens]
        ids = {id(p) for p in qformer}
        return [{"params": [p for p in model.parameters() if id(p) not in ids], "lr": lr},
                {"params": qformer, "lr": lr / 4}]

    def qformer_layer(self) -> int:
        qc = self.config.qformer_config
        n_cross = len(range(0, qc.num_hidden_layers, qc.cross_attention_frequency))
        num, den = self.vicrop_qformer_layer
        return n_cross * num // den

    def frame(self, region):
        from model_adapters.instructblip import instructblip_frame
        return instructblip_frame(region, (INPUT_SIDE, INPUT_SIDE))

    def pixels(self, images):
        return list(self.processor.image_processor(images, return_tensors="pt")["pixel_values"].to(torch.float16))

    def grid(self, pixels):
        return INPUT_SIDE // self.patch, INPUT_SIDE // self.patch

    def tokens(self, pixels):
        return self.queries

    def prompt_ids(self, text, image_tokens):
        """As the adapter builds them: 32 query slots per image, then <s> and the text."""
        key = (text, len(image_tokens))
        if key not in self.prompt_cache:
            image = self.config.image_token_id
            self.prompt_cache[key] = [image] * (self.queries * len(image_tokens)) + self.tokenizer(text)["input_ids"]
        return self.prompt_cache[key]

    def answer_ids(self, answer):
        return self.tokenizer(" " + answer, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]

    def collate_images(self, images, texts):
        q = self.qformer_tokenizer(texts, padding=True, return_tensors="pt")
        return {"pixel_values": torch.stack(images).float(), "qformer_input_ids": q["input_ids"],
                "qformer_attention_mask": q["attention_mask"]}

    def forward(self, model, batch, with_maps, layer):
        """The adapter's path: vision encoder, Q-Former (its cross-attention kept for the map),
        projection into the query slots, then the language model on the embeddings."""
        from model_adapters.instructblip import run_qformer
        inputs = batch.inputs
        image_embeds, q = run_qformer(model, inputs, output_attentions=with_maps)
        features = model.language_projection(q.last_hidden_state[:, :self.queries])
        embeds = model.get_input_embeddings()(inputs["input_ids"])
        slots = model.get_placeholder_mask(inputs["input_ids"], inputs_embeds=embeds)
        embeds = embeds.masked_scatter(slots, features.to(embeds.dtype))
        out = model.language_model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"],
                                   labels=batch.labels, output_attentions=with_maps, output_hidden_states=True)
        maps = None
        if with_maps:
            cross = q.cross_attentions[self.qformer_layer()].mean(1)[:, :self.queries, 1:]  # (images, 32, patches)
            rows = self.first_image_rows(self.lm_rows(out.attentions, batch, layer), batch)
            maps = normalised([row @ cross[first] for row, first in zip(rows, batch.first_images())])
        # Two digit heads: one on the vision tower's patches (behind the Q-Former's 32-query
        # bottleneck alone the tower got no gradient it could use: chance for 400 steps), one
        # on the projected queries (with the first alone the tower read digits, the map found
        # the sign, and the answers stayed at chance: the queries did not pass the digit on).
        return Pass(out, maps, [list(image_embeds[:, 1:]), list(features)])


def llama_config(tokenizer):
    from transformers import LlamaConfig
    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=WIDTH, intermediate_size=2 * WIDTH,
                       num_hidden_layers=DEPTH, num_attention_heads=HEADS, num_key_value_heads=HEADS,
                       max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def chat_prompt_ids(family: Family, text, image_tokens, image_token) -> list[int]:
    """The processor's chat template with one image entry per image, tokenised, each image
    token expanded to that image's number of language tokens (as the processor expands it)."""
    key = (text, len(image_tokens))
    if key not in family.prompt_cache:
        content = [{"type": "image"}] * len(image_tokens) + [{"type": "text", "text": text}]
        prompt = family.processor.apply_chat_template([{"role": "user", "content": content}],
                                                      add_generation_prompt=True)
        family.prompt_cache[key] = family.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    token = family.tokenizer.convert_tokens_to_ids(image_token)
    out, counts = [], iter(image_tokens)
    for t in family.prompt_cache[key]:
        out += [t] * next(counts) if t == token else [t]
    return out


def recipes() -> dict[str, type[Family]]:
    """Every registered family's training recipe (collab_eval.families, ``recipe``), by the
    recipe's name (``--family`` of train_smalldetail: llava, qwen2-vl, instructblip, ...)."""
    from collab_eval import families
    found = (family.recipe_class() for family in families.all_families() if family.recipe)
    return {recipe.name: recipe for recipe in found}
