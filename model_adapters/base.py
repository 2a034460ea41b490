"""The lmms-eval model class shared by every collab adapter.

It owns everything that is not family-specific: arguments, devices and ranks, the
request loop, records, progress, generation with logits and attentions, FLOP
bookkeeping. A family subclass supplies only: the model class, the prompt for one or
several images, where each image's tokens sit, how an attention row becomes a patch
grid, the encoder's framing of a region, and FLOPs from its config.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import datasets
import numpy as np
import torch
from accelerate import Accelerator
from lmms_eval.api.instance import GenerationResult, TokenCounts
from lmms_eval.api.model import lmms
from datasets.features.features import require_decoding
from loguru import logger
from tqdm import tqdm

from collab_eval import cost_handoff
from collab_eval import flops as F
from collab_eval import model_args as A
from collab_eval import resume as resume_from
from collab_eval.edge import Box, Codec, strict_decoding
from collab_eval.pipeline import (Answer, GenericMaps, Limits, OriginalSizes, SentGlobals, Settings, finish_sample,
                                  images_in, send_globals)
from collab_eval.policy import POLICIES, Policy
from collab_eval.records import RecordWriteError, RecordWriter, SampleRecord, failure_reason, strip_media
from collab_eval.resume import Answered
from collab_eval.run_identity import RunPlan, append_event, plan_run, settings_fingerprint
from collab_eval.uncertainty import AGGREGATES
from model_adapters.attention_capture import KERNEL, Probe, probing
from model_adapters.prefix_cache import Prefix

DTYPES = {"auto": "auto", "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class CostCounts(TokenCounts):
    """Token counts plus this sample's costs and run, so they appear in --log_samples output
    (``run_id`` ties lmms-eval's samples log to the records)."""
    bytes_total: int | None = None
    flops_total: int | None = None
    retransmitted: bool | None = None
    run_id: str | None = None

    def to_dict(self):
        return {**super().to_dict(), "bytes_total": self.bytes_total, "flops_total": self.flops_total,
                "retransmitted": self.retransmitted, "run_id": self.run_id}


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
        resume: bool = False,
        run_id: str | None = None,
        device: str | None = None,
        device_map: str | None = None,
        dtype: str = "auto",
        threads: int = 1,
        reuse_prefix: bool | str = True,
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        family_settings: dict | None = None,  # a family's own args, parsed by its __init__ (not a model arg)
        **unknown,
    ):
        super().__init__()
        # Every argument is checked before anything loads; a message names the arg, its value
        # and what is allowed.
        with self.checking_args():
            if unknown:
                raise A.ModelArgError(f"unknown model arg(s) {sorted(unknown)}; allowed: {sorted(self.allowed_args())}")
            score = A.one_of("score", score, AGGREGATES)
            dtype = A.one_of("dtype", dtype, tuple(DTYPES))
            self.max_new_tokens = A.integer("max_new_tokens", max_new_tokens, minimum=1)
            layer = A.optional_integer("layer", layer, minimum=0)
            policy_ = Policy(A.one_of("policy", policy, POLICIES),
                             A.number("threshold", threshold, infinite_ok=True,
                                      what="a number of nats (inf: never retransmit, -inf: always)"),
                             A.number("rate", rate, what="a number in [0, 1]"), A.integer("seed", seed))
            codec_ = Codec.parse(str(codec))
            resume = A.boolean("resume", resume)
            threads = A.integer("threads", threads, minimum=0)
            self.reuse_prefix = A.boolean("reuse_prefix", reuse_prefix)
            run_id = A.run_id("run_id", run_id)
            self.pretrained = A.local_path_exists("pretrained", resolve_pretrained(str(pretrained)))
            records_dir = A.writable_directory("records_dir", records_dir)
            self.batch_size = A.integer("batch_size", 1 if str(batch_size).strip() == "auto" else batch_size, minimum=1)
        self.settings = Settings(policy_, codec_, aggregation=score)
        run_settings = {
            "adapter": self.model_id, "model": checkpoint_identity(self.pretrained), "policy": policy_.name,
            **policy_.args(), "codec": str(codec_), "score": score, "layer": layer,
            "max_new_tokens": self.max_new_tokens, "dtype": dtype, "reuse_prefix": self.reuse_prefix,
            **(family_settings or {}),
        }

        self.accelerator = Accelerator()
        self._rank, self._world_size, self._local_rank = process_layout(self.accelerator)
        self._device = self._pick_device(device)
        # Which run this is: rank 0 decides (a new id, or the run to continue), every rank follows.
        plan = self._from_rank0(lambda: plan_run(records_dir, self.model_id, run_settings, run_id=run_id, resume=resume))
        for note in plan.notes if self._rank == 0 else ():
            logger.warning(f"{self.model_id}: {note}")

        self.use_threads(threads)
        self.model, self.processor = self.load(self.pretrained, DTYPES[dtype], device_map)
        n_layers = self.language_config().num_hidden_layers
        self.layer = layer if layer is not None else n_layers * self.vicrop_layer[0] // self.vicrop_layer[1]
        if not 0 <= self.layer < n_layers:
            raise ValueError(f"{self.model_id}: layer must be in 0..{n_layers - 1}, got {layer}")

        self.generic_maps = GenericMaps()
        self.original_sizes = OriginalSizes()
        self._plain_docs = {}
        self.run_id, self._session, self._records_dir = plan.run_id, plan.session, records_dir
        # Rank 0 tidies a resumed run's files before any rank reads or appends to them.
        self._from_rank0(lambda: self._start_session(plan, run_settings))
        self.answered = resume_from.answered(records_dir, self.run_id) if plan.resumed else {}
        self.records = RecordWriter(records_dir, self.run_id, self._rank)
        logger.info(f"{self.model_id}: run {self.run_id}{' (resumed)' if plan.resumed else ''}, records -> {self.records.path}")

    @contextmanager
    def checking_args(self):
        """Argument errors say which adapter refused them (families use it for their own args)."""
        try:
            yield
        except ValueError as err:
            raise A.ModelArgError(f"{self.model_id}: {err}") from None

    def _from_rank0(self, decide):
        """Run ``decide`` on rank 0 and give its result, or the reason it failed, to every rank
        (an exception on rank 0 alone would leave the others waiting forever)."""
        box = [None]
        if self._rank == 0:
            try:
                box[0] = decide()
            except Exception as err:  # noqa: BLE001  -- sent to every rank, raised there
                box[0] = RunPlan(error=str(err))
        if self._world_size > 1:
            torch.distributed.broadcast_object_list(box, src=0)
        if isinstance(box[0], RunPlan) and box[0].error:
            raise ValueError(f"{self.model_id}: {box[0].error}")
        return box[0]

    def _start_session(self, plan, run_settings):
        if plan.resumed:
            dropped = resume_from.tidy(self._records_dir, plan.run_id)
            recorded = len(resume_from.answered(self._records_dir, plan.run_id))
            logger.info(f"{self.model_id}: resuming run {plan.run_id}: {recorded} samples already recorded are not run "
                        f"again (lmms-eval gets their recorded answers); dropped from its files: {dropped['failed']} "
                        f"failed record(s), run again now, {dropped['partial']} partial line(s)")
        append_event(self._records_dir, plan.run_id, {
            "event": "start", "session": plan.session, "world_size": self._world_size,
            "resumed": plan.resumed, "settings": settings_fingerprint(run_settings)})
        return plan

    # ----- lmms-eval interface -------------------------------------------------
    @classmethod
    def allowed_args(cls):
        import inspect
        return sorted({p for klass in cls.__mro__ if issubclass(klass, CollabModel)
                       for p in inspect.signature(klass.__init__).parameters
                       if p not in ("self", "unknown", "kwargs", "family_settings")})

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
        results, answered = [], []
        sent, retransmitted, run_now = 0, 0, 0
        started = time.perf_counter()
        pbar = tqdm(total=len(requests), disable=self.rank != 0, desc=self.model_id)
        # Not yet answered in this run (a resumed run's recorded samples and lmms-eval's
        # padding repeats of a rank's last request are), each once, in request order.
        to_run = {}
        for request in requests:
            _, _, _, doc_id, task, _ = request.args
            if (task, int(doc_id)) not in self.answered:
                to_run.setdefault((task, int(doc_id)), request)
        pending = list(to_run.values())
        for first in range(0, len(pending), self.batch_size):
            for record in self.run_batch(pending[first:first + self.batch_size]):
                try:
                    record = self.records.write(record)
                except RecordWriteError as err:
                    logger.error(f"{self.model_id}: {err}")
                    raise
                self.answered[(record.task, int(record.doc_id))] = Answered.of(record)
                run_now += 1
                pbar.update(1)
        for request in requests:
            _, _, _, doc_id, task, split = request.args
            done = self.answered[(task, int(doc_id))]
            answered.append(cost_handoff.sample_key(task, split, doc_id))
            cost_handoff.remember(answered[-1], cost_handoff.SampleCosts.of(task, done))
            results.append(GenerationResult(done.answer, CostCounts(
                output_tokens=done.output_tokens, bytes_total=done.bytes_total, flops_total=done.flops_total,
                retransmitted=done.retransmitted, run_id=self.run_id)))
            sent += done.bytes_total
            retransmitted += done.retransmitted
        pbar.update(len(requests) - pbar.n)
        if results:
            pbar.set_postfix(retx=f"{retransmitted / len(results):.2f}", bytes=f"{sent / len(results):.0f}")
        pbar.close()
        append_event(self._records_dir, self.run_id, {"event": "finish", "session": self._session, "rank": self._rank,
                                                      "requests": len(requests), "run_now": run_now})
        cost_handoff.publish(answered, self.world_size, self.rank, time.perf_counter() - started,
                             sum(r.token_counts.output_tokens or 0 for r in results))
        return results

    def run_batch(self, requests) -> Iterator[SampleRecord]:
        """Records of ``requests`` (lmms-eval instances), each as soon as it is final (the
        caller writes it: a crash loses no finished record): the edge's global images sample
        by sample, stage 1 for all of them in one padded generate (samples with the same
        generation limits), then each sample's gate, RoI and stage 2 alone. Each record
        equals the one the sample gets run alone; a sample that fails fails only itself."""
        samples = [self._start_sample(*request.args) for request in requests]
        yield from (self._finished(s) for s in samples if s.globals_ is None)
        ready = [s for s in samples if s.globals_ is not None]
        locate, keep = self.settings.policy.locates, self.settings.policy.name != "never"
        for limits in dict.fromkeys(s.limits for s in ready):
            group = [s for s in ready if s.limits == limits]
            started = time.perf_counter()
            try:
                stage1 = self.answer_batch([(s.globals_.images, s.question) for s in group], limits,
                                           with_attention=locate, keep_prefix=keep)
            except Exception as err:  # noqa: BLE001  -- which sample? each tries again alone
                if len(group) > 1:
                    logger.warning(f"{self.model_id}: a batch's stage 1 failed ({failure_reason(err)}); "
                                   f"its samples run one at a time")
                stage1 = [err] if len(group) == 1 else [self._alone(s, limits, locate, keep) for s in group]
            share = (time.perf_counter() - started) / len(group)
            for s in group:
                answer = stage1.pop(0)  # each answer (and the prefix it holds) freed once its sample is done
                if isinstance(answer, Exception):
                    self._fail(s, answer)
                    yield self._finished(s)
                    continue
                s.globals_.clock.share("stage1", share)
                try:
                    with strict_decoding():
                        outcome = finish_sample(self, s.globals_, answer, s.question, settings=self.settings,
                                                limits=limits, sample_key=f"{s.header['task']}/{s.header['doc_id']}",
                                                cache_scope=s.header["task"], generic_maps=self.generic_maps)
                    s.record = SampleRecord(**vars(outcome), **s.header)
                except Exception as err:  # noqa: BLE001  -- one bad sample fails itself, never the run
                    self._fail(s, err)
                yield self._finished(s)

    def _alone(self, sample: "_Sample", limits: Limits, locate: bool, keep: bool) -> Answer | Exception:
        try:
            return self.answer_batch([(sample.globals_.images, sample.question)], limits,
                                     with_attention=locate, keep_prefix=keep)[0]
        except Exception as err:  # noqa: BLE001  -- becomes this sample's failed record
            return err

    @staticmethod
    def _finished(sample: "_Sample") -> SampleRecord:
        """The record, its total time the sample's own laps plus reading its document."""
        laps = sum(v for k, v in sample.record.seconds.items() if k != "total")
        sample.record.seconds["total"] = round(sample.seconds + laps, 6)
        return sample.record

    def _start_sample(self, context, gen_kwargs, doc_to_visual, doc_id, task, split) -> "_Sample":
        """A sample's record header and the edge's global images (or its failed record)."""
        docs = self.task_dict[task][split]
        if (task, split) not in self._plain_docs:
            self._plain_docs[(task, split)] = without_media(docs)
        header = dict(run_id=self.run_id, task=task, doc_id=doc_id, question=context, model=self.pretrained,
                      codec=str(self.settings.codec), policy=self.settings.policy.name,
                      policy_args=self.settings.policy.args(), rank=self._rank,
                      score_name=self.settings.aggregation,
                      doc=strip_media(self._plain_docs[(task, split)][doc_id]))
        sample = _Sample(header, Limits.from_gen_kwargs(gen_kwargs, cap=self.max_new_tokens),
                         self.without_image_placeholders(context), docs)
        started = time.perf_counter()
        try:
            with strict_decoding():  # decoding the row's image may fail: it is this sample's failure
                images = images_in(doc_to_visual(docs[doc_id]))
                sample.globals_ = send_globals(self, images, settings=self.settings, cache_scope=task,
                                               original_sizes=self.original_sizes)
        except Exception as err:  # noqa: BLE001  -- one bad sample fails itself, never the run
            self._fail(sample, err)
        sample.seconds = time.perf_counter() - started - (sum(sample.globals_.clock.laps.values()) if sample.globals_ else 0)
        return sample

    def _fail(self, sample: "_Sample", err: Exception) -> None:
        doc_id, task = sample.header["doc_id"], sample.header["task"]
        sample.record = SampleRecord(**sample.header, error=media_problem(sample.docs, doc_id) or failure_reason(err))
        logger.warning(f"{self.model_id}: {task} doc {doc_id} failed: {sample.record.error}")

    def without_image_placeholders(self, context: str) -> str:
        """The prompt without image placeholders: lmms-eval's generic ``<image>`` (some
        tasks, MUIRBench's questions among them, write one per image into the text) and the
        processor's own image token. The adapter puts every image ahead of the text itself;
        a placeholder left in would ask the processor for one image too many."""
        own = getattr(self.processor, "image_token", None)  # a str, or a tokenizers AddedToken (InstructBLIP)
        for token in {"<image>", str(own) if own is not None else ""} - {""}:
            context = context.replace(token, "")
        return context

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
        attentions = self.image_attentions(probes, inputs, len(images)) if with_attention else None
        kept = self.prefix_to_keep(getattr(out, "cache", None), inputs) if keep_prefix else None
        # The probe's one extra row of scores (about 1e-6 of the prefill) is not counted:
        # stage 1 costs what it costs under a policy that reads no map, as the records assume.
        return Answer(cut_at_stop(text, limits.until), logits,
                      self.flops(inputs, generated=len(out.logits), cached=reused), attentions, prefix=kept)

    @torch.inference_mode()
    def answer_batch(self, requests: list[tuple[list, str]], limits: Limits, with_attention: bool,
                     keep_prefix: bool = False) -> list[Answer]:
        """``answer`` for several (images, question) requests in one left-padded generate
        (stage 1 of a batch). Each Answer is the request's own: tokens up to its row's EOS,
        its logits, its map from its row of the probe (padding dropped), FLOPs of its own
        unpadded prompt (what it costs alone: the padding is not counted), its prefix from
        its row of the cache."""
        if len(requests) == 1:
            return [self.answer(*requests[0], limits, with_attention, keep_prefix=keep_prefix)]
        samples = []
        for images, question in requests:  # each prompt as it is alone (InstructBLIP's Q-Former probe fills here)
            probes = self.attention_probes(stop=False) if with_attention else {}
            with probing(probes):
                samples.append((self.inputs(images, question), probes))
        batch, pads = self.left_padded([inputs for inputs, _ in samples])
        lm = {self.lm_module(): Probe(last_only=True)} if with_attention else {}
        with probing(lm):
            out = self.generate(batch, max_new_tokens=limits.max_new_tokens, do_sample=False, num_beams=1,
                                output_logits=True, return_dict_in_generate=True)
        width, steps = batch["input_ids"].shape[1], len(out.logits)
        eos = self.eos_ids()
        cache = getattr(out, "cache", None)
        answers = []
        for row, ((inputs, probes), (images, _)) in enumerate(zip(samples, requests)):
            new_tokens = out.sequences[row, width:width + steps]
            ends = [k for k, token in enumerate(new_tokens.tolist()) if token in eos]
            generated = ends[0] + 1 if ends else steps  # alone, its generate stops at its first EOS
            text = self.processor.tokenizer.decode(new_tokens[:generated], skip_special_tokens=True)
            logits = torch.stack([step[row] for step in out.logits[:generated]])
            attentions = None
            if with_attention:
                probes[self.lm_module()] = Probe(last_only=True, weights=lm[self.lm_module()].weights[row:row + 1, :, pads[row]:])
                attentions = self.image_attentions(probes, inputs, len(images))
            kept = self.prefix_to_keep(cache, inputs, row=row, start=pads[row]) if keep_prefix else None
            answers.append(Answer(cut_at_stop(text, limits.until), logits, self.flops(inputs, generated=generated),
                                  attentions, prefix=kept))
        return answers

    # Per-token inputs, padded on the left in a batch; every other input is per image, stacked.
    TOKEN_INPUTS = ("input_ids", "attention_mask", "inputs_embeds", "mm_token_type_ids", "token_type_ids")

    def left_padded(self, samples: list[dict]) -> tuple[dict, list[int]]:
        """One batch from single-prompt inputs: per-token tensors padded on the left (the
        mask zero there), per-image tensors (pixels, grids) concatenated in sample order,
        which is the order the models scatter image features into their image tokens.
        Returns the batch and each row's padding length."""
        width = max(inputs["input_ids"].shape[1] for inputs in samples)
        pads = [width - inputs["input_ids"].shape[1] for inputs in samples]
        pad_id = self.processor.tokenizer.pad_token_id
        pad_id = pad_id if pad_id is not None else next(iter(self.eos_ids()))
        batch = {}
        for key in self.generate_inputs(samples[0]):
            values = [inputs[key] for inputs in samples]
            if key in self.TOKEN_INPUTS:
                fill = pad_id if key == "input_ids" else 0
                batch[key] = torch.cat([torch.cat([v.new_full((1, pad, *v.shape[2:]), fill), v], dim=1)
                                        for v, pad in zip(values, pads)])
            else:
                batch[key] = torch.cat(values)
        return batch, pads

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

    def patch_grid(self, row: np.ndarray, inputs, image_index: int, probes=None) -> np.ndarray:
        """``row``: the attention to image ``image_index``'s tokens, as that image's grid;
        ``probes``: what attention_probes captured."""
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
    """The documents' plain columns, readable without decoding media (which may be broken):
    every column whose feature needs decoding at any depth (an image, a list of images, a
    struct holding audio) goes."""
    if not isinstance(docs, datasets.Dataset):
        return docs
    media = {name for name, feature in docs.features.items() if require_decoding(feature)}
    return docs.select_columns([name for name in docs.column_names if name not in media])


def media_problem(docs, doc_id) -> str | None:
    """Why the row's image cannot be used, in the edge's words, read from its undecoded bytes:
    a broken image fails already when datasets decodes the row, with PIL's message (which
    names an in-memory object, not the problem). None when every image of the row is fine."""
    if not isinstance(docs, datasets.Dataset):
        return None
    from collab_eval.edge import BadImage, sanitize
    for name, feature in docs.features.items():
        if isinstance(feature, datasets.Image):
            raw = docs.cast_column(name, datasets.Image(decode=False))[doc_id][name]
            try:
                if raw is not None:
                    sanitize(raw)
            except BadImage as err:
                return str(err)
    return None


def cut_at_stop(text: str, until: tuple[str, ...]) -> str:
    """lmms-eval's stop strings end the answer, as every built-in adapter does."""
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text.strip()


def checkpoint_identity(pretrained: str) -> str:
    """The checkpoint as a run's settings name it: a local one by its absolute path (the
    same from any working directory), a hub one by its id."""
    path = Path(pretrained).expanduser()
    return str(path.resolve()) if path.exists() else pretrained


def resolve_pretrained(name: str) -> str:
    """Short names of checkpoints shipped with the package resolve to their files."""
    from collab_eval.checkpoints import resolve
    return resolve(name)


@dataclass
class _Sample:
    """One request on its way through a batch."""
    header: dict
    limits: Limits
    question: str
    docs: object
    globals_: SentGlobals | None = None
    record: SampleRecord | None = None
    seconds: float = 0.0  # time outside the pipeline's laps (reading the document)


@dataclass
class _Args:
    """A request's arguments, as an lmms-eval instance carries them."""
    args: tuple
