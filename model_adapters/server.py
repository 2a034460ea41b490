"""The model wrapper shared by the three families: it loads a checkpoint and runs passes.

``ServerModel`` is the server of the pipeline (collab_eval.pipeline.Server): load (device,
dtype, threads), answer and answer_batch (greedy, with logits, and the question's attention
map when asked), the generic prompt's map, reuse of a prompt's prefix, and the FLOPs of
each pass. A family subclass supplies only: the model class, the prompt for one or several
images, where each image's tokens sit, how an attention row becomes a patch grid, the
encoder's framing of a region, and the encoder's FLOPs from its config.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from collab_eval import flops as flop_counts
from collab_eval import run_settings
from collab_eval.edge import Box
from collab_eval.server_contract import Answer, Limits
from model_adapters.attention_capture import KERNEL, Probe, backward_into, probing, weigh_by_gradient
from model_adapters.flop_measure import counted
from model_adapters.prefix_cache import Prefix

# The dtype model arg's values (collab_eval.run_settings) as torch dtypes; "auto" is resolved at load.
DTYPES = {name: name if name == "auto" else getattr(torch, name) for name in run_settings.DTYPES}


class ServerModel:
    """A checkpoint of one family, ready to answer (see the module docstring)."""
    model_class = None  # a transformers *ForConditionalGeneration class
    # ViCrop's attention layer for the family, as (layer, of depth): the default layer is
    # that depth scaled to the checkpoint (ViCrop reads LLaVA-1.5-7B's layer 14 of 32).
    vicrop_layer = (14, 32)
    input_side: int  # set by each family once its processor is known
    # What the edge sends: "processor", every image as the family's processor sizes it (the
    # global image is its own resize and crop, global_view; a local image is framed to the
    # encoder's input), so a local image costs what a global one does; "fit" (LLaVA-NeXT), each
    # image at its own fit, never upsampled: the processor makes its views from that, so a global
    # image's pixels are the processor's own only where the original is under its fit, and a
    # small local image costs fewer tokens than a large global one.
    sends = "processor"

    def __init__(self, pretrained: str, *, name: str = "collab", device: torch.device | str = "cpu",
                 dtype: str = "auto", device_map: str | None = None, threads: int = 1, layer: int | None = None,
                 reuse_prefix: bool = True):
        """``name``: who speaks in error messages (the adapter's model id)."""
        self.name, self.reuse_prefix = name, reuse_prefix
        self.device = torch.device(device)
        self.use_threads(threads)
        self.model, self.processor = self.load(pretrained, DTYPES[dtype], device_map)
        n_layers = self.language_config().num_hidden_layers
        self.layer = layer if layer is not None else n_layers * self.vicrop_layer[0] // self.vicrop_layer[1]
        if not 0 <= self.layer < n_layers:
            raise ValueError(f"{self.name}: layer must be in 0..{n_layers - 1}, got {layer}")

    @staticmethod
    def family_args() -> dict:
        """The family's own model args, checked (a family with some overrides this with its
        keyword arguments; the adapter calls it before anything loads)."""
        return {}

    # ----- loading -------------------------------------------------------------
    def use_threads(self, threads: int) -> None:
        """CPU threads for torch (process-wide). One by default: several threads on a machine
        whose cores are busy slow every sample down many times over (docs/running.md, "CPU
        threads"), while on idle cores they gain at most their number. 0 keeps torch's own."""
        if threads and self.device.type == "cpu":
            torch.set_num_threads(threads)

    def load(self, pretrained, dtype, device_map):
        from transformers import AutoProcessor
        if dtype == "auto" and self.device.type == "cpu":
            dtype = torch.float32  # half precision is slow or unsupported on CPUs
        # SDPA everywhere; the map's rows come from probes on the layers read (attention_capture).
        model = self.model_class.from_pretrained(pretrained, dtype=dtype, device_map=device_map or None,
                                                 attn_implementation=KERNEL)
        if not device_map:
            model.to(self.device)
        # Frozen: a locator's gradient pass (grad_att, pure_grad) needs gradients of activations
        # only, never of weights (no weight gradients computed or stored).
        model.requires_grad_(False)
        return model.eval(), AutoProcessor.from_pretrained(pretrained)

    def to_device(self, inputs):
        inputs = inputs.to(self.model.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        return inputs

    def without_image_placeholders(self, context: str) -> str:
        """The prompt without image placeholders: lmms-eval's generic ``<image>`` (some
        tasks, MUIRBench's questions among them, write one per image into the text) and the
        processor's own image token. The images go ahead of the text in every prompt; a
        placeholder left in would ask the processor for one image too many."""
        own = getattr(self.processor, "image_token", None)  # a str, or a tokenizers AddedToken (InstructBLIP)
        for token in {"<image>", str(own) if own is not None else ""} - {""}:
            context = context.replace(token, "")
        return context

    # ----- passes the pipeline runs ----------------------------------------------
    @torch.inference_mode()
    def answer(self, images, question, limits: Limits, with_attention, prefix: Prefix | None = None,
               keep_prefix: bool = False) -> Answer:
        """Greedy answer to ``question`` on ``images``. ``prefix``: a previous pass's keys and
        values of the same first image and prompt start, reused when it matches;
        ``keep_prefix``: return this prompt's, for the passes after it."""
        probes = self.attention_probes(stop=False) if with_attention else {}
        with probing(probes):  # the probes fill during the prefill (their module's first call)
            inputs = self.inputs(images, question)
            reused = self.reusable(prefix, inputs)
            out = self.generate(self.continue_from(inputs, reused), max_new_tokens=limits.max_new_tokens,
                                do_sample=False, num_beams=1, output_logits=True, return_dict_in_generate=True,
                                **self.cache_arg(reused))
        prompt_len = inputs["input_ids"].shape[1]
        new_tokens = out.sequences[0, prompt_len:] if out.sequences.shape[1] > prompt_len else out.sequences[0, :0]
        new_tokens = new_tokens[: len(out.logits)]
        text = self.processor.tokenizer.decode(new_tokens, skip_special_tokens=True)
        logits = torch.stack([step[0] for step in out.logits])
        attentions = self.image_attentions(probes, inputs, len(images)) if with_attention else None
        kept = self.prefix_to_keep(getattr(out, "cache", None), inputs) if keep_prefix else None
        # The probe's one extra row of scores (about 1e-6 of the prefill) is not counted:
        # stage 1 costs what it costs under a policy that reads no map, as the records assume.
        return Answer(cut_at_stop(text, limits.until), logits,
                      self.flops(inputs, generated=len(out.logits), cached=reused), attentions, prefix=kept,
                      tokens=tuple(new_tokens.tolist()))

    @torch.inference_mode()
    def answer_batch(self, requests: list[tuple[list, str]], limits: Limits, with_attention: bool,
                     keep_prefix: bool = False, prefixes: list[Prefix | None] | None = None) -> list[Answer]:
        """``answer`` for several (images, question) requests in one padded generate. Each
        Answer is the request's own: tokens up to its row's EOS, its logits, its map from its
        row of the probe (padding dropped), FLOPs of its own unpadded prompt (what it costs
        alone: the padding is not counted), its prefix from its row of the cache.
        ``prefixes``: each request's earlier prefix, continued from where it matches (stage 2:
        every row from its own stage-1 cache row)."""
        prefixes = prefixes or [None] * len(requests)
        if len(requests) == 1:
            return [self.answer(*requests[0], limits, with_attention, prefix=prefixes[0], keep_prefix=keep_prefix)]
        samples = []
        for (images, question), prefix in zip(requests, prefixes):  # each prompt as it is alone
            probes = self.attention_probes(stop=False) if with_attention else {}
            with probing(probes):  # InstructBLIP's Q-Former probe fills here
                inputs = self.inputs(images, question)
            samples.append((inputs, probes, self.reusable(prefix, inputs)))
        reused = [r for _, _, r in samples]
        if any(r is None for r in reused) and any(r is not None for r in reused):
            # Rows that continue and rows that do not: each as it runs alone.
            return [self.answer(images, question, limits, with_attention, prefix=prefix, keep_prefix=keep_prefix)
                    for (images, question), prefix in zip(requests, prefixes)]
        cached = [r.length if r is not None else 0 for r in reused]
        batch, pads = self.padded([self.continue_from(inputs, r) for inputs, _, r in samples],
                                  [inputs for inputs, _, _ in samples], cached)
        cache = Prefix.batch_cache(reused, self.model.config) if reused[0] is not None else None
        lm = {self.lm_module(): Probe(last_only=True)} if with_attention else {}
        with probing(lm):
            out = self.generate(batch, max_new_tokens=limits.max_new_tokens, do_sample=False, num_beams=1,
                                output_logits=True, return_dict_in_generate=True,
                                **({"cache": cache} if cache is not None else {}))
        width, steps = batch["input_ids"].shape[1], len(out.logits)
        eos = self.eos_ids()
        answers = []
        for row, ((inputs, probes, kept_from), (images, _)) in enumerate(zip(samples, requests)):
            new_tokens = out.sequences[row, width:width + steps]
            ends = [k for k, token in enumerate(new_tokens.tolist()) if token in eos]
            generated = ends[0] + 1 if ends else steps  # alone, its generate stops at its first EOS
            text = self.processor.tokenizer.decode(new_tokens[:generated], skip_special_tokens=True)
            logits = torch.stack([step[row] for step in out.logits[:generated]])
            attentions = None
            if with_attention:
                probes[self.lm_module()] = Probe(last_only=True,
                                                 weights=lm[self.lm_module()].weights[row:row + 1, :, pads[row]:])
                attentions = self.image_attentions(probes, inputs, len(images))
            kept = (self.prefix_to_keep(getattr(out, "cache", None), inputs, row=row, start=pads[row])
                    if keep_prefix else None)
            answers.append(Answer(cut_at_stop(text, limits.until), logits,
                                  self.flops(inputs, generated=generated, cached=kept_from), attentions, prefix=kept,
                                  tokens=tuple(new_tokens[:generated].tolist())))
        return answers

    # Per-token inputs, padded in a batch; every other input is per image, stacked.
    TOKEN_INPUTS = ("input_ids", "attention_mask", "inputs_embeds", "mm_token_type_ids", "token_type_ids")

    def padded(self, samples: list[dict], prompts: list[dict], cached: list[int]) -> tuple[dict, list[int]]:
        """One batch from single-prompt inputs (``samples``, as generate takes them; ``prompts``,
        as the processor made them). Row i: padding, its first ``cached[i]`` positions (what its
        cache row holds) ending where the longest of them ends, padding, the rest of its prompt
        ending at the batch's end; the mask is zero on the padding, so positions (counted from
        the mask) are the row's own. With nothing cached that is left padding. Per-image inputs
        are concatenated in sample order, the order the models place image features in.
        Returns the batch and each row's padding before its first uncached position."""
        rests = [inputs["input_ids"].shape[1] - n for inputs, n in zip(prompts, cached)]
        head, tail = max(cached), max(rests)
        pad_id = self.processor.tokenizer.pad_token_id
        pad_id = pad_id if pad_id is not None else next(iter(self.eos_ids()))
        batch = {}
        for key in self.generate_inputs(samples[0]):
            values = [inputs[key] for inputs in samples]
            if key in self.TOKEN_INPUTS:
                fill = pad_id if key == "input_ids" else 0
                batch[key] = torch.cat([torch.cat([v.new_full((1, head - n, *v.shape[2:]), fill), v[:, :n],
                                                   v.new_full((1, tail - rest, *v.shape[2:]), fill), v[:, n:]], dim=1)
                                        for v, n, rest in zip(values, cached, rests)])
            else:
                batch[key] = self.concatenated(key, values)
        return batch, [tail - rest for rest in rests]

    def concatenated(self, key: str, values: list):
        """A per-image input of several samples as one (a family whose inputs hold more than
        tensors overrides it)."""
        return torch.cat(values)

    def generate_inputs(self, inputs) -> list[str]:
        """The inputs generate takes (a family whose inputs carry more overrides it)."""
        return list(inputs.keys())

    def eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        return set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}

    def lm_module(self) -> torch.nn.Module:
        """The attention module whose row the map reads."""
        return self.model.get_decoder().layers[self.layer].self_attn

    @torch.inference_mode()
    def attention(self, image, prompt, prefix: Prefix | None = None):
        """The map of ``prompt`` alone: the pass stops inside the map layer, once its row is
        known; from ``prefix`` (the image's keys and values) when it matches."""
        probes = self.attention_probes(stop=True)
        with probing(probes):
            inputs = self.inputs([image], prompt)
            reused = self.reusable(prefix, inputs)
            self.generate(self.continue_from(inputs, reused), max_new_tokens=1, do_sample=False, num_beams=1,
                          **self.cache_arg(reused))
        return (self.image_attentions(probes, inputs, 1)[0],
                self.flops(inputs, generated=1, stop_at=self.layer, cached=reused))

    def generate(self, inputs, **kwargs):
        """The model's own generate; a family whose generate hides what its map needs overrides it."""
        return self.model.generate(**inputs, **kwargs)

    # ----- gradient passes (locators grad_att and pure_grad) -------------------
    # One forward of ``prompt`` on one image with autograd on, then one backward of the log
    # of the top next-token probability at the last position (ViCrop's target: minus the
    # cross-entropy against the argmax). They run only when a locator asks, outside stage 1
    # (which stays under inference_mode). FLOPs: as torch executed them (flop_measure).
    def gradient_attention(self, image, prompt) -> tuple[np.ndarray, int]:
        """ViCrop's grad_att map: the probed attention (``attention_probes``: the last token's
        row at the map layer, and a family's own, InstructBLIP's Q-Former cross-attention)
        times the ReLU of its gradient, head-averaged, as a patch grid; and its FLOPs."""
        probes = self.attention_probes(stop=False)
        for probe in probes.values():
            probe.grad = True

        def run():
            with torch.enable_grad(), probing(probes):
                inputs = self.gradient_inputs([image], prompt)
                target = top_log_probability(self.last_logits(inputs))
            weigh_by_gradient(probes, target)
            return self.image_attentions(probes, inputs, 1)[0]
        return counted(run)

    def pixel_gradient(self, image, prompt) -> tuple[tuple[np.ndarray, tuple[int, int]], int]:
        """The gradient of the same target with respect to the image's pixels as the encoder
        gets them, (height, width, channels) over the encoder's input, with the image's map
        shape; and its FLOPs."""
        def run():
            with torch.enable_grad():
                inputs = self.gradient_inputs([image], prompt)
                pixels = inputs["pixel_values"].requires_grad_()
                backward_into(top_log_probability(self.last_logits(inputs)), [pixels])
            return self.pixel_layout(pixels.grad.float().cpu(), inputs), self.map_shape(inputs)
        return counted(run)

    def gradient_inputs(self, images, prompt):
        """Inputs of a differentiable forward (a family that encodes the images inside
        ``inputs`` overrides it, so that the encoding runs in the graph)."""
        return self.inputs(images, prompt)

    def last_logits(self, inputs) -> torch.Tensor:
        """Next-token logits at the last prompt position, one forward, no cache."""
        return self.model(**inputs, logits_to_keep=1, use_cache=False).logits[:, -1]

    def pixel_layout(self, grad: torch.Tensor, inputs) -> np.ndarray:
        """``pixel_values``-shaped gradient as (height, width, channels) of the first image
        (default: pixel_values are (images, channels, height, width))."""
        return grad[0].permute(1, 2, 0).numpy()

    def map_shape(self, inputs, image_index: int = 0) -> tuple[int, int]:
        """(rows, cols) of image ``image_index``'s patch grid (the maps' shape)."""
        return self.grid

    # ----- reusing a prompt's prefix (prefix_cache) ----------------------------
    def prefix_length(self, inputs) -> int:
        """Where the shared prefix ends: after the first (global) image's tokens."""
        return int(self.image_token_positions(inputs, image_index=0)[-1]) + 1

    def prefix_facts(self, inputs) -> dict:
        """What, besides the token ids, the prefix's keys and values depend on: the first
        image's pixels as the encoder gets them (and a family's own)."""
        return {"pixels": self.first_image_pixels(inputs)}

    def first_image_pixels(self, inputs) -> torch.Tensor:
        return inputs["pixel_values"][0]

    def prefix_to_keep(self, cache, inputs, row: int = 0, start: int = 0) -> Prefix | None:
        """This prompt's prefix from ``cache`` (batch row ``row``, its prompt from position
        ``start``), for the passes after it; None when reuse is off or generate kept no cache."""
        if cache is None or not self.reuse_prefix:
            return None
        return Prefix.of(cache, inputs["input_ids"][0], self.prefix_length(inputs), row=row, start=start,
                         **self.prefix_facts(inputs))

    def reusable(self, prefix: Prefix | None, inputs) -> Prefix | None:
        if prefix is None or not self.reuse_prefix:
            return None
        return prefix if prefix.matches(inputs["input_ids"][0], **self.prefix_facts(inputs)) else None

    def cache_arg(self, prefix: Prefix | None) -> dict:
        return {"cache": prefix.cache(self.model.config)} if prefix is not None else {}

    def continue_from(self, inputs, prefix: Prefix | None):
        """``inputs`` for generate when ``prefix`` is cached: without what only the cached
        positions needed (LLaVA: the first image's pixels). Default: unchanged."""
        return inputs

    def encoded_from(self, prefix: Prefix | None) -> int:
        """The first image the vision encoder runs on (the cached first image is not encoded again)."""
        return 0 if prefix is None else 1

    def attention_probes(self, stop: bool) -> dict[torch.nn.Module, Probe]:
        """What a map reads: the last prompt token's row at the configured decoder layer
        (``stop``: nothing after it is computed). Families add their own (InstructBLIP's Q-Former)."""
        return {self.lm_module(): Probe(last_only=True, stop=stop)}

    def image_attentions(self, probes, inputs, n_images: int) -> list[np.ndarray]:
        """Head-averaged attention of the last prompt token to each image's tokens, at the
        configured layer, as each image's patch grid (one softmax row: the grids' sums say
        how the attention splits between the images)."""
        row = self.lm_probe(probes).weights[0, -1]
        return [self.patch_grid(row[self.image_token_positions(inputs, image_index=i)].cpu().numpy(), inputs,
                                image_index=i, probes=probes)
                for i in range(n_images)]

    def lm_probe(self, probes) -> Probe:
        probe = probes[self.lm_module()]
        if probe.weights is None:
            raise RuntimeError(f"{self.name}: the attention probe at layer {self.layer} was never called "
                               f"(the model's attention kernel is {self.model.config._attn_implementation!r}, "
                               f"not {KERNEL!r})")
        return probe

    # ----- what each family provides -------------------------------------------
    input_side: int

    def language_config(self):
        return self.model.config.text_config

    def inputs(self, images, question):
        raise NotImplementedError

    def image_token_positions(self, inputs, image_index: int) -> torch.Tensor:
        raise NotImplementedError

    def patch_grid(self, row: np.ndarray, inputs, image_index: int, probes=None) -> np.ndarray:
        """``row``: the attention to image ``image_index``'s tokens, as that image's grid;
        ``probes``: what attention_probes captured."""
        raise NotImplementedError

    def frame(self, region: Box):
        raise NotImplementedError

    def global_view(self, original: Image.Image) -> Image.Image:
        """The global image the edge sends: the whole original resized and cropped by the
        processor's own code (its resize, its crop, its resampling filter), in 8 bits. Given
        it, the processor changes nothing, so with a lossless codec the model sees exactly
        what its processor makes of the original (policy=never answers as the model's own
        pipeline does); ``frame`` of the whole image names the same part of the original."""
        out = self.processor.image_processor(images=[original], do_rescale=False, do_normalize=False,
                                             return_tensors="pt")
        return Image.fromarray(self.view_pixels(out))

    def view_pixels(self, out) -> np.ndarray:
        """The (height, width, 3) uint8 image in the image processor's un-normalised output
        ``out`` (one image): ``pixel_values`` (1, channels, height, width) for most families."""
        return eight_bit(out["pixel_values"][0].permute(1, 2, 0))

    def encoder_flops(self, inputs, first: int = 0) -> dict[str, int]:
        """FLOPs of the vision encoder and of the connector into the LM (``vision``,
        ``projector``) on the images from index ``first`` on."""
        raise NotImplementedError

    # ----- derived from the hooks above ----------------------------------------
    def flops(self, inputs, generated: int, stop_at: int | None = None, cached: Prefix | None = None) -> dict[str, int]:
        """FLOPs of one pass over ``inputs`` generating ``generated`` tokens (``stop_at``: a
        map-only pass that ends inside that decoder layer, once its attention row is known;
        ``cached``: the prefix whose keys and values were reused, not computed)."""
        tc = self.language_config()
        decoder = dict(hidden=tc.hidden_size, intermediate=tc.intermediate_size, heads=tc.num_attention_heads,
                       kv_heads=tc.num_key_value_heads, layers=tc.num_hidden_layers,
                       head_dim=getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads)
        prompt = inputs["input_ids"].shape[1]
        skip = cached.length if cached is not None else 0
        encoder = self.encoder_flops(inputs, first=self.encoded_from(cached))
        if stop_at is not None:
            return {**encoder, "prefill": flop_counts.map_pass(prompt, stop_at, cached=skip, **decoder), "decode": 0}
        prefill, decode_flops = flop_counts.generation(prompt, generated, tc.vocab_size, cached=skip, **decoder)
        return {**encoder, "prefill": prefill, "decode": decode_flops}



def top_log_probability(logits: torch.Tensor) -> torch.Tensor:
    """log p of the most likely next token (first row): ViCrop's gradient target."""
    return torch.log_softmax(logits[0].float(), dim=-1).max()


def cut_at_stop(text: str, until: tuple[str, ...]) -> str:
    """lmms-eval's stop strings end the answer, as every built-in adapter does."""
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text.strip()


def eight_bit(pixels: torch.Tensor) -> np.ndarray:
    return pixels.float().round().clamp(0, 255).to(torch.uint8).numpy()


def pick_device(device: str | None, local_rank: int, world_size: int, who: str) -> torch.device:
    """The device model arg as a torch device: unset, this rank's GPU when there is one; a
    cuda device under several processes becomes this rank's own."""
    if device in (None, "", "auto"):
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    chosen = torch.device(device)
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{who}: device={device} asked for but no CUDA device is available")
    return torch.device(f"cuda:{local_rank}") if chosen.type == "cuda" and world_size > 1 else chosen
