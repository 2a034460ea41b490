"""The lmms-eval model class shared by every collab adapter.

It owns everything that is not family-specific: arguments, devices and ranks, the
request loop, records, progress, generation with logits and attentions, FLOP
bookkeeping. A family subclass supplies only: the model class, the prompt for one or
two images, where the first image's tokens sit, how an attention row becomes a patch
grid, the encoder's framing of a region, and FLOPs from its config.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import datasets
import numpy as np
import torch
from accelerate import Accelerator
from lmms_eval.api.instance import GenerationResult, TokenCounts
from lmms_eval.api.model import lmms
from lmms_eval.utils import is_multimodal_content
from loguru import logger
from tqdm import tqdm

from collab_eval import cost_handoff
from collab_eval import flops as F
from collab_eval.edge import Box, Codec, strict_decoding
from collab_eval.pipeline import Answer, GenericMaps, Limits, OriginalSizes, Settings, run_sample
from collab_eval.policy import Policy
from collab_eval.records import RecordWriter, SampleRecord
from collab_eval.uncertainty import AGGREGATES
from model_adapters.attention_capture import KERNEL, Probe, probing
from model_adapters.prefix_cache import Prefix

DTYPES = {"auto": "auto", "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class CostCounts(TokenCounts):
    """Token counts plus this sample's costs, so they appear in --log_samples output."""
    bytes_total: int | None = None
    flops_total: int | None = None
    retransmitted: bool | None = None

    def to_dict(self):
        return {**super().to_dict(), "bytes_total": self.bytes_total,
                "flops_total": self.flops_total, "retransmitted": self.retransmitted}


class CollabModel(lmms):
    model_id = "collab"  # the name users pass to --model; set by each family
    model_class = None  # a transformers *ForConditionalGeneration class
    # ViCrop's attention layer for the family, as (layer, of depth): the default layer is
    # that depth scaled to the checkpoint (ViCrop reads LLaVA-1.5-7B's layer 14 of 32).
    vicrop_layer = (14, 32)

    def __init__(
        self,
        pretrained: str,
        policy: str = "threshold",
        threshold: float = 1.0,
        rate: float = 0.5,
        score: str = "max",
        codec: str = "png",
        layer: int | None = None,
        seed: int = 0,
        records_dir: str = "collab_records",
        max_new_tokens: int = 32,
        device: str | None = None,
        device_map: str | None = None,
        dtype: str = "auto",
        threads: int = 1,
        reuse_prefix: bool | str = True,
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        **unknown,
    ):
        super().__init__()
        if unknown:
            raise ValueError(f"{self.model_id}: unknown model arg(s) {sorted(unknown)}; allowed: {sorted(self.allowed_args())}")
        if score not in AGGREGATES:
            raise ValueError(f"{self.model_id}: score must be one of {AGGREGATES}, got {score!r}")
        if dtype not in DTYPES:
            raise ValueError(f"{self.model_id}: dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
        if int(max_new_tokens) < 1:
            raise ValueError(f"{self.model_id}: max_new_tokens must be >= 1, got {max_new_tokens}")
        if str(batch_size) not in ("1", "auto"):
            logger.warning(f"{self.model_id}: samples run one at a time (two-stage pipeline); batch_size={batch_size} ignored")
        try:
            policy_ = Policy(str(policy), float(threshold), float(rate), int(seed))
            codec_ = Codec.parse(str(codec))
        except ValueError as err:
            raise ValueError(f"{self.model_id}: {err}") from None
        self.settings = Settings(policy_, codec_, aggregation=score)
        self.max_new_tokens = int(max_new_tokens)

        self.accelerator = Accelerator()
        self._rank, self._world_size, self._local_rank = process_layout(self.accelerator)
        self._device = self._pick_device(device)
        self.use_threads(int(threads))
        self.reuse_prefix = parse_bool(reuse_prefix, "reuse_prefix", self.model_id)
        self.pretrained = resolve_pretrained(str(pretrained))
        self.model, self.processor = self.load(self.pretrained, DTYPES[dtype], device_map)
        n_layers = self.language_config().num_hidden_layers
        self.layer = int(layer) if layer is not None else n_layers * self.vicrop_layer[0] // self.vicrop_layer[1]
        if not 0 <= self.layer < n_layers:
            raise ValueError(f"{self.model_id}: layer must be in 0..{n_layers - 1}, got {layer}")

        self.generic_maps = GenericMaps()
        self.original_sizes = OriginalSizes()
        self._plain_docs = {}
        run_name = [f"{self.model_id}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}"]
        if self._world_size > 1:  # every rank writes under rank 0's run name
            torch.distributed.broadcast_object_list(run_name, src=0)
        run_name = run_name[0]
        self.records = RecordWriter(records_dir, run_name, self._rank)
        logger.info(f"{self.model_id}: records -> {self.records.path}")

    # ----- lmms-eval interface -------------------------------------------------
    @classmethod
    def allowed_args(cls):
        import inspect
        return sorted({p for klass in cls.__mro__ if issubclass(klass, CollabModel)
                       for p in inspect.signature(klass.__init__).parameters if p not in ("self", "unknown", "kwargs")})

    @property
    def device(self):
        return self._device

    @property
    def rank(self):
        return self._rank

    @property
    def world_size(self):
        return self._world_size

    def loglikelihood(self, requests):
        raise NotImplementedError(f"{self.model_id} only generates (generate_until tasks)")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError(f"{self.model_id} does not support multi-round generation")

    def generate_until(self, requests) -> list[GenerationResult]:
        results = []
        sent, retransmitted = 0, 0
        pbar = tqdm(total=len(requests), disable=self.rank != 0, desc=self.model_id)
        for request in requests:
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            record = self.run_one(context, gen_kwargs, doc_to_visual, doc_id, task, split)
            self.records.write(record)
            cost_handoff.remember(task, record.doc, record)
            results.append(GenerationResult(record.answer, CostCounts(
                output_tokens=len(record.min_entropy), bytes_total=record.bytes_total,
                flops_total=record.flops_total, retransmitted=record.retransmitted)))
            sent += record.bytes_total
            retransmitted += record.retransmitted
            pbar.update(1)
            pbar.set_postfix(retx=f"{retransmitted / len(results):.2f}", bytes=f"{sent / len(results):.0f}")
        pbar.close()
        return results

    def run_one(self, context, gen_kwargs, doc_to_visual, doc_id, task, split) -> SampleRecord:
        docs = self.task_dict[task][split]
        if (task, split) not in self._plain_docs:
            self._plain_docs[(task, split)] = without_media(docs)
        header = dict(task=task, doc_id=doc_id, question=context, model=self.pretrained,
                      codec=str(self.settings.codec), policy=self.settings.policy.name,
                      policy_args=self.settings.policy.args(), rank=self._rank,
                      score_name=self.settings.aggregation,
                      doc={k: v for k, v in self._plain_docs[(task, split)][doc_id].items()
                           if not is_multimodal_content(v)})
        limits = Limits.from_gen_kwargs(gen_kwargs, cap=self.max_new_tokens)
        started = time.perf_counter()
        try:
            with strict_decoding():  # decoding the row's image may fail: it is this sample's failure
                visuals = doc_to_visual(docs[doc_id])
                if not visuals:
                    raise ValueError("the sample has no image")
                outcome = run_sample(self, visuals[0], context, settings=self.settings, limits=limits,
                                     sample_key=f"{task}/{doc_id}", cache_scope=task, generic_maps=self.generic_maps,
                                     original_sizes=self.original_sizes)
            record = SampleRecord(**vars(outcome), **header)
        except Exception as err:  # one bad sample fails itself, never the run
            record = SampleRecord(**header, error=f"{type(err).__name__}: {err}")
            logger.warning(f"{self.model_id}: {task} doc {doc_id} failed: {record.error}")
        record.seconds["total"] = round(time.perf_counter() - started, 6)
        return record

    # ----- Server interface used by the pipeline -------------------------------
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
        attention = self.image_attention(probes, inputs) if with_attention else None
        kept = (self.prefix_of(out.cache, inputs)
                if keep_prefix and self.reuse_prefix and getattr(out, "cache", None) is not None else None)
        # The probe's one extra row of scores (about 1e-6 of the prefill) is not counted:
        # stage 1 costs what it costs under a policy that reads no map, as the records assume.
        return Answer(cut_at_stop(text, limits.until), logits,
                      self.flops(inputs, generated=len(out.logits), cached=reused), attention, prefix=kept)

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
        return self.image_attention(probes, inputs), self.flops(inputs, generated=1, stop_at=self.layer, cached=reused)

    def generate(self, inputs, **kwargs):
        """The model's own generate; a family whose generate hides what its map needs overrides it."""
        return self.model.generate(**inputs, **kwargs)

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

    def prefix_of(self, cache, inputs) -> Prefix:
        return Prefix.of(cache, inputs["input_ids"][0], self.prefix_length(inputs), **self.prefix_facts(inputs))

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
        return {self.model.get_decoder().layers[self.layer].self_attn: Probe(last_only=True, stop=stop)}

    def image_attention(self, probes, inputs) -> np.ndarray:
        """Head-averaged attention of the last prompt token to the first image's tokens,
        at the configured layer, as that image's patch grid."""
        row = self.lm_probe(probes).weights[0, -1]
        positions = self.image_token_positions(inputs, image_index=0)
        return self.patch_grid(row[positions].cpu().numpy(), inputs, probes)

    def lm_probe(self, probes) -> Probe:
        probe = probes[self.model.get_decoder().layers[self.layer].self_attn]
        if probe.weights is None:
            raise RuntimeError(f"{self.model_id}: the attention probe at layer {self.layer} was never called "
                               f"(the model's attention kernel is {self.model.config._attn_implementation!r}, not {KERNEL!r})")
        return probe

    # ----- loading -------------------------------------------------------------
    def _pick_device(self, device):
        if device in (None, "", "auto"):
            return torch.device(f"cuda:{self._local_rank}" if torch.cuda.is_available() else "cpu")
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"{self.model_id}: device={device} asked for but no CUDA device is available")
        if device.type == "cuda" and self.world_size > 1:
            device = torch.device(f"cuda:{self._local_rank}")
        return device

    def use_threads(self, threads: int) -> None:
        """CPU threads for torch (process-wide). One by default: several threads on a
        machine whose cores are busy slow every sample down many times over (README, "CPU
        threads"), while on idle cores they gain at most their number. 0 keeps torch's own."""
        if threads < 0:
            raise ValueError(f"{self.model_id}: threads must be >= 0 (0: torch's default), got {threads}")
        if threads and self._device.type == "cpu":
            torch.set_num_threads(threads)

    def load(self, pretrained, dtype, device_map):
        from transformers import AutoProcessor
        if dtype == "auto" and self._device.type == "cpu":
            dtype = torch.float32  # half precision is slow or unsupported on CPUs
        # SDPA everywhere; the map's rows come from probes on the layers read (attention_capture).
        model = self.model_class.from_pretrained(pretrained, dtype=dtype, device_map=device_map or None,
                                                 attn_implementation=KERNEL)
        if not device_map:
            model.to(self._device)
        return model.eval(), AutoProcessor.from_pretrained(pretrained)

    def to_device(self, inputs):
        inputs = inputs.to(self.model.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        return inputs

    # ----- what each family provides -------------------------------------------
    input_side: int

    def language_config(self):
        return self.model.config.text_config

    def inputs(self, images, question):
        raise NotImplementedError

    def image_token_positions(self, inputs, image_index: int) -> torch.Tensor:
        raise NotImplementedError

    def patch_grid(self, row: np.ndarray, inputs, probes=None) -> np.ndarray:
        """``row``: attention to the first image's tokens; ``probes``: what attention_probes captured."""
        raise NotImplementedError

    def frame(self, region: Box):
        raise NotImplementedError

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
            return {**encoder, "prefill": F.map_pass(prompt, stop_at, cached=skip, **decoder), "decode": 0}
        prefill, decode_flops = F.generation(prompt, generated, tc.vocab_size, cached=skip, **decoder)
        return {**encoder, "prefill": prefill, "decode": decode_flops}


def process_layout(accelerator) -> tuple[int, int, int]:
    """(rank, world size, local rank). lmms-eval shards requests by torch.distributed's
    ranks; Accelerator reports a single process on a CPU-only torchrun launch, so the
    process group, when there is one, is the authority."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return (torch.distributed.get_rank(), torch.distributed.get_world_size(),
                int(os.environ.get("LOCAL_RANK", accelerator.local_process_index)))
    return accelerator.process_index, accelerator.num_processes, accelerator.local_process_index


def without_media(docs):
    """The documents' plain columns, readable without decoding media (which may be broken)."""
    if not isinstance(docs, datasets.Dataset):
        return docs
    media = {name for name, feature in docs.features.items() if isinstance(feature, (datasets.Image, datasets.Audio))}
    return docs.select_columns([name for name in docs.column_names if name not in media])


def parse_bool(value, name: str, model_id: str) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes"):
        return True
    if str(value).lower() in ("false", "0", "no"):
        return False
    raise ValueError(f"{model_id}: {name} must be true or false, got {value!r}")


def cut_at_stop(text: str, until: tuple[str, ...]) -> str:
    """lmms-eval's stop strings end the answer, as every built-in adapter does."""
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text.strip()


def resolve_pretrained(name: str) -> str:
    """Short names of checkpoints shipped with the package resolve to their files."""
    from collab_eval.checkpoints import resolve
    return resolve(name)
