"""collab_instructblip: InstructBLIP (Salesforce/instructblip-vicuna-7b).

The language model sees 32 query tokens per image, not patches. The patch map is the
language model's attention to the 32 query slots pushed through the Q-Former's
cross-attention to the vision encoder's patches. The model's own forward and generate do
not return that cross-attention, so the adapter runs the vision encoder and the Q-Former
itself (one cross-attention layer probed, see attention_capture) and generates with the
language model from the resulting embeddings, as the model's generate does.

Several images (a multi-image task, stage 2): one set of 32 query tokens per image ahead
of the text, in image order (globals, then the crop). The released model was trained with
one image only, so several images are outside its training distribution; transformers is
used as released (no patching).
"""
from __future__ import annotations

import torch
from transformers import InstructBlipForConditionalGeneration

from collab_eval import flops as flop_counts
from collab_eval.edge import Box
from collab_eval.families import Family
from collab_eval.model_args import optional_integer
from model_adapters.attention_capture import Probe
from model_adapters.lmms_adapter import adapter_class
from model_adapters.server import ServerModel


class InstructBlipServer(ServerModel):
    model_class = InstructBlipForConditionalGeneration
    # ViCrop (InstructBLIP-Vicuna-7B): language-model layer 15 of 32, and the third of the
    # Q-Former's six cross-attention layers; the defaults scale both to the checkpoint.
    vicrop_layer = (15, 32)
    vicrop_qformer_layer = (2, 6)

    @staticmethod
    def family_args(qformer_layer: int | None = None) -> dict:
        return {"qformer_layer": optional_integer("qformer_layer", qformer_layer, minimum=0)}

    def __init__(self, pretrained: str, *, qformer_layer: int | None = None, **common):
        super().__init__(pretrained, **common)
        qc = self.model.config.qformer_config
        n_cross = len(range(0, qc.num_hidden_layers, qc.cross_attention_frequency))
        num, den = self.vicrop_qformer_layer
        self.qformer_layer = qformer_layer if qformer_layer is not None else n_cross * num // den
        if not 0 <= self.qformer_layer < n_cross:
            raise ValueError(f"{self.name}: qformer_layer indexes the Q-Former's {n_cross} cross-attention "
                             f"layers: must be in 0..{n_cross - 1}, got {qformer_layer}")
        size = self.processor.image_processor.size
        self.size = (size["width"], size["height"])  # the processor squashes every image to this
        self.input_side = self.size[1]
        patch = self.model.config.vision_config.patch_size
        self.grid = (self.size[1] // patch, self.size[0] // patch)
        self.queries = self.model.config.num_query_tokens
        # The checkpoint's generation settings (EOS, padding) govern, as in the model's own generate.
        self.model.language_model.generation_config = self.model.generation_config

    def inputs(self, images, question):
        """Token ids as the processor makes them for one image (32 query slots, then <s> and
        the text), with 32 more slots in front per further image; the Q-Former reads the
        question beside every image. The language model's input embeddings are computed
        here, once."""
        return self.with_embeddings(self.gradient_inputs(images, question))

    def gradient_inputs(self, images, question):
        """The processor's inputs, before the images are encoded (a gradient pass encodes
        them in its graph, ``last_logits``)."""
        inputs = self.processor(images=images, text=question, return_tensors="pt")
        if len(images) > 1:
            more = torch.full((1, self.queries * (len(images) - 1)), self.model.config.image_token_id, dtype=torch.long)
            inputs["input_ids"] = torch.cat([more, inputs["input_ids"]], dim=1)
            inputs["attention_mask"] = torch.cat([torch.ones_like(more), inputs["attention_mask"]], dim=1)
            for key in ("qformer_input_ids", "qformer_attention_mask"):
                inputs[key] = inputs[key].repeat(len(images), 1)
        return self.to_device(inputs)

    def with_embeddings(self, inputs):
        """``inputs`` plus the language model's input embeddings, the query slots filled."""
        features = self.image_features(inputs)
        embeds = self.model.get_input_embeddings()(inputs["input_ids"])
        slots = self.model.get_placeholder_mask(inputs["input_ids"], inputs_embeds=embeds)
        inputs["inputs_embeds"] = embeds.masked_scatter(slots, features.to(embeds.dtype))
        return inputs

    def last_logits(self, inputs):
        inputs = self.with_embeddings(inputs)
        return self.model.language_model(inputs_embeds=inputs["inputs_embeds"], attention_mask=inputs["attention_mask"],
                                         logits_to_keep=1, use_cache=False).logits[:, -1]

    def image_features(self, inputs):
        """Vision encoder, Q-Former and projection, as the model's get_image_features runs
        them: (images, 32, hidden)."""
        _, out = run_qformer(self.model, inputs)
        return self.model.language_projection(out.last_hidden_state[:, :self.queries])

    def generate(self, inputs, **kwargs):
        # Given input_ids beside the embeddings, generate returns the prompt too: the base
        # class slices it off at the prompt length.
        return self.model.language_model.generate(
            input_ids=inputs["input_ids"], inputs_embeds=inputs["inputs_embeds"],
            attention_mask=inputs["attention_mask"], **kwargs)

    def generate_inputs(self, inputs):
        """Only the language model generates; the images are already in its input embeddings."""
        return ["input_ids", "attention_mask", "inputs_embeds"]

    def prefix_facts(self, inputs):
        """The query slots' embeddings depend on the instruction the Q-Former read beside the
        image: a prefix is reused only under the same instruction (stage 2, not the generic prompt)."""
        return {**super().prefix_facts(inputs), "instruction": inputs["qformer_input_ids"][0]}

    def encoded_from(self, prefix):
        """Every image is encoded again (the Q-Former runs on the images as a batch); only the
        language model's keys and values of the first image's slots are reused."""
        return 0

    def image_token_positions(self, inputs, image_index):
        positions = (inputs["input_ids"][0] == self.model.config.image_token_id).nonzero().flatten()
        return positions[image_index * self.queries:(image_index + 1) * self.queries]

    def attention_probes(self, stop):
        """Besides the language model's row: the 32 queries' cross-attention to the
        patches at ``qformer_layer``."""
        return {**super().attention_probes(stop), self.cross_attention_module(): Probe(last_only=False)}

    def cross_attention_module(self):
        qformer = self.model.qformer
        layer = qformer.encoder.layer[self.qformer_layer * qformer.config.cross_attention_frequency]
        return layer.crossattention.attention

    def patch_grid(self, row, inputs, image_index, probes=None):
        return self.query_patch_map(row, probes[self.cross_attention_module()].weights[image_index])

    def query_patch_map(self, row, cross):
        """``row``: attention to one image's 32 query slots; ``cross``: that image's queries'
        head-averaged cross-attention at ``qformer_layer``, (32, 1 + patches). Each slot's
        share goes to the patches in proportion to its query's cross-attention (the CLS
        position is dropped)."""
        return (row @ cross[:, 1:].float().cpu().numpy()).reshape(self.grid)

    def frame(self, region: Box):
        return instructblip_frame(region, self.size)

    def encoder_flops(self, inputs, first=0):
        vc, qc, tc = self.model.config.vision_config, self.model.config.qformer_config, self.model.config.text_config
        n_images = inputs["pixel_values"].shape[0] - first
        patches = self.grid[0] * self.grid[1]
        vision = n_images * (flop_counts.patch_embedding(patches, 3, vc.patch_size, vc.hidden_size)
                             + flop_counts.vit_encoder(patches + 1, vc.hidden_size, vc.intermediate_size,
                                             vc.num_attention_heads, vc.num_hidden_layers))
        # The connector: the Q-Former (queries + instruction text) and the projection into the LM.
        projector = n_images * (
            flop_counts.qformer(self.queries, inputs["qformer_input_ids"].shape[1], patches + 1, hidden=qc.hidden_size,
                      intermediate=qc.intermediate_size, heads=qc.num_attention_heads, encoder_hidden=vc.hidden_size,
                      layers=qc.num_hidden_layers, cross_attention_frequency=qc.cross_attention_frequency)
            + flop_counts.linear(self.queries, qc.hidden_size, tc.hidden_size))
        return {"vision": vision, "projector": projector}


FAMILY = Family(
    name="instructblip", title="InstructBLIP", server="model_adapters.instructblip:InstructBlipServer",
    reference_checkpoints=("Salesforce/instructblip-vicuna-7b",),
    lmms_eval_model="instructblip", lmms_eval_model_args="device=cpu",
    tiny="collab_eval.lab.tiny_checkpoints:build_tiny_instructblip", trained="smalldetail-instructblip",
    recipe="collab_eval.lab.smalldetail_families:InstructBlip",
    lmms_eval_differs="lmms-eval's instructblip returns the prompt in front of the answer under transformers 5 "
                      "(every sample scored wrong); it accepts no device_map, and wants device=cpu on a CPU",
    lmms_eval_compare="after_prompt")
CollabInstructBlip = adapter_class(FAMILY)  # the lmms-eval class (--model collab_instructblip)


def instructblip_frame(region: Box, size: tuple[int, int]) -> tuple[Box, tuple[int, int]]:
    """What InstructBLIP's processor shows of ``region``: all of it, squashed to ``size``
    (w, h) without keeping the aspect ratio, each grid cell an equal fraction of it."""
    return region, size


def run_qformer(model, inputs, output_attentions: bool = False):
    """The vision encoder and the Q-Former over ``inputs`` (pixel_values, qformer_input_ids,
    qformer_attention_mask), as the model's get_image_features runs them: the patch
    embeddings and the Q-Former's output (with its cross-attentions when asked)."""
    image_embeds = model.vision_model(pixel_values=inputs["pixel_values"]).last_hidden_state
    query_tokens = model.query_tokens.expand(image_embeds.shape[0], -1, -1)
    query_mask = torch.ones(query_tokens.shape[:-1], dtype=torch.long, device=image_embeds.device)
    out = model.qformer(
        input_ids=inputs["qformer_input_ids"],
        attention_mask=torch.cat([query_mask, inputs["qformer_attention_mask"]], dim=1),
        query_embeds=query_tokens, encoder_hidden_states=image_embeds,
        encoder_attention_mask=torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device),
        output_attentions=output_attentions,
    )
    return image_embeds, out
