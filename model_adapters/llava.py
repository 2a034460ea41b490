"""collab_llava: LLaVA-1.5 (llava-hf/llava-1.5-7b-hf and -13b-hf)."""
from __future__ import annotations

from transformers import LlavaForConditionalGeneration

from collab_eval import flops as flop_counts
from collab_eval.edge import Box
from collab_eval.families import Family
from model_adapters.lmms_adapter import adapter_class
from model_adapters.server import ServerModel


class LlavaServer(ServerModel):
    model_class = LlavaForConditionalGeneration

    def __init__(self, pretrained: str, **common):
        super().__init__(pretrained, **common)
        ip = self.processor.image_processor
        self.crop = (ip.crop_size["width"], ip.crop_size["height"])
        self.shortest_edge = ip.size["shortest_edge"]
        self.input_side = self.crop[1]
        self.patch = self.model.config.vision_config.patch_size
        self.grid = (self.crop[1] // self.patch, self.crop[0] // self.patch)

    def inputs(self, images, question):
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]
        prompt = self.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        return self.to_device(self.processor(images=images, text=prompt, return_tensors="pt"))

    def image_token_positions(self, inputs, image_index):
        positions = (inputs["input_ids"][0] == self.model.config.image_token_id).nonzero().flatten()
        per_image = self.grid[0] * self.grid[1]
        return positions[image_index * per_image:(image_index + 1) * per_image]

    def patch_grid(self, row, inputs, image_index, probes=None):
        return row.reshape(self.grid)  # every image is centre-cropped to the same grid

    def frame(self, region: Box):
        return llava_frame(region, self.crop, self.shortest_edge)

    def continue_from(self, inputs, prefix):
        """With the first image's positions cached, only the other images are encoded."""
        if prefix is None:
            return inputs
        rest = {k: v for k, v in inputs.items() if k != "pixel_values"}
        if inputs["pixel_values"].shape[0] > 1:
            rest["pixel_values"] = inputs["pixel_values"][1:]
        return rest

    def encoder_flops(self, inputs, first=0):
        vc, tc = self.model.config.vision_config, self.model.config.text_config
        n_images = inputs["pixel_values"].shape[0] - first
        patches = self.grid[0] * self.grid[1]
        vision = n_images * (flop_counts.patch_embedding(patches, vc.num_channels, vc.patch_size, vc.hidden_size)
                             + flop_counts.vit_encoder(patches + 1, vc.hidden_size, vc.intermediate_size,
                                             vc.num_attention_heads, self.vision_layers_run()))
        projector = n_images * (flop_counts.linear(patches, vc.hidden_size, tc.hidden_size)
                                + flop_counts.linear(patches, tc.hidden_size, tc.hidden_size))
        return {"vision": vision, "projector": projector}

    def vision_layers_run(self) -> int:
        """CLIP runs every layer even though LLaVA reads the second to last."""
        return self.model.config.vision_config.num_hidden_layers


FAMILY = Family(
    name="llava", title="LLaVA-1.5", server="model_adapters.llava:LlavaServer",
    reference_checkpoints=("llava-hf/llava-1.5-7b-hf", "llava-hf/llava-1.5-13b-hf"),
    lmms_eval_model="llava_hf", lmms_eval_model_args="device=cpu,device_map=cpu",
    tiny="collab_eval.lab.tiny_checkpoints:build_tiny_llava", trained="smalldetail-llava",
    recipe="collab_eval.lab.smalldetail_families:Llava",
    lmms_eval_differs="prompt: llava_hf writes LLaVA-1.5's template itself (the same text); generation: the same "
                      "greedy decoding")
CollabLlava = adapter_class(FAMILY)  # the lmms-eval class (--model collab_llava)


def llava_frame(region: Box, crop: tuple[int, int], shortest_edge: int) -> tuple[Box, tuple[int, int]]:
    """What LLaVA's processor shows of ``region``: it resizes the short edge to
    ``shortest_edge`` and centre-crops ``crop`` (w, h). In original pixels that is the
    centred part of the region with the crop's aspect ratio, scaled by shortest_edge /
    short side; the edge resamples it straight to ``crop``."""
    x0, y0, x1, y1 = region
    scale = shortest_edge / min(x1 - x0, y1 - y0)
    w = min(crop[0] / scale, x1 - x0)
    h = min(crop[1] / scale, y1 - y0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), crop
