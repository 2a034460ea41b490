"""collab_qwen3_vl: Qwen3-VL (Qwen/Qwen3-VL-2B-Instruct, -4B-Instruct, -8B-Instruct).

The processor, the merged grid and the prompt's layout are Qwen2-VL's, so the server is
Qwen2-VL's with 16-pixel patches (32 px per language token). What differs:
- DeepStack: the outputs of the vision blocks in ``deepstack_visual_indexes`` go through
  mergers of their own and are added to the image tokens' hidden states after the first
  decoder layers; a continued prefix's crop brings its DeepStack features with it, and a
  batch concatenates them as it does the crops' main features.
- Its chat template adds no system turn; lmms-eval's ``qwen3_vl`` sends "You are a helpful
  assistant." as one, and so does this adapter.
- The vision tower: learned position embeddings resampled to each grid (no FLOPs counted:
  a lookup and a weighted sum), LayerNorm blocks with a two-matrix MLP, full attention per
  image; the mergers (main and DeepStack) are the connector.
"""
from __future__ import annotations

from transformers import Qwen3VLForConditionalGeneration
from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

from collab_eval import flops as flop_counts
from collab_eval.families import Family
from model_adapters.lmms_adapter import adapter_class
from model_adapters.qwen2_vl import Qwen2VLServer


class Qwen3VLServer(Qwen2VLServer):
    model_class = Qwen3VLForConditionalGeneration
    vicrop_layer = (22, 28)  # Qwen2.5-VL-7B's (ViCrop publishes none for Qwen3-VL), scaled
    system_prompt = "You are a helpful assistant."

    def concatenated(self, key, values):
        """The continued rows' pre-encoded images as one, DeepStack features included."""
        if key != "mm_encoder_outputs":
            return super().concatenated(key, values)
        images = [value["image"] for value in values]
        return {"image": BaseModelOutputWithDeepstackFeatures(
            pooler_output=[feature for image in images for feature in image.pooler_output],
            deepstack_features=[[feature for image in images for feature in image.deepstack_features[level]]
                                for level in range(len(images[0].deepstack_features))])}

    def encoder_flops(self, inputs, first=0):
        vc = self.model.config.vision_config
        merge = vc.spatial_merge_size
        merged_width = vc.hidden_size * merge ** 2
        vision = projector = 0
        for t, h, w in inputs["image_grid_thw"][first:].tolist():
            patches = t * h * w
            vision += (flop_counts.patch_embedding(patches, vc.in_channels, vc.patch_size, vc.hidden_size,
                                                   temporal=vc.temporal_patch_size)
                       + t * flop_counts.vit_encoder(h * w, vc.hidden_size, vc.intermediate_size, vc.num_heads,
                                                     vc.depth))
            tokens = patches // merge ** 2
            mergers = 1 + len(vc.deepstack_visual_indexes)  # the main merger and one per DeepStack level
            projector += mergers * (flop_counts.linear(tokens, merged_width, merged_width)
                                    + flop_counts.linear(tokens, merged_width, vc.out_hidden_size))
        return {"vision": vision, "projector": projector}


FAMILY = Family(
    name="qwen3_vl", title="Qwen3-VL", server="model_adapters.qwen3_vl:Qwen3VLServer",
    reference_checkpoints=("Qwen/Qwen3-VL-8B-Instruct", "Qwen/Qwen3-VL-4B-Instruct", "Qwen/Qwen3-VL-2B-Instruct"),
    lmms_eval_model="qwen3_vl", lmms_eval_model_args="device=cpu,device_map=cpu",
    tiny="collab_eval.lab.tiny_checkpoints:build_tiny_qwen3_vl",
    lmms_eval_differs="its chat class (what --model qwen3_vl runs) hands images to qwen_vl_utils without the "
                      "model args' pixel budget (each image at its own size, up to 16,384 tokens, resized with "
                      "PIL, no second resize) and loads bfloat16: other pixels at collab's default budget; at a "
                      "budget holding every image, dtype=bfloat16 and originals neither side resizes the answers "
                      "are equal (tests/test_qwen_vl_cli.py)",
    lmms_eval_compare="none")
CollabQwen3VL = adapter_class(FAMILY)  # the lmms-eval class (--model collab_qwen3_vl)
