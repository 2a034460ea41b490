"""The lmms-eval model class of every collab adapter: requests in, results and costs out.

It only translates: model args into checked settings (collab_eval.run_settings), a method and
a loaded server (a family's ``ServerModel``), lmms-eval's requests into pipeline samples, the pipeline's results into
records (through the run session) and into lmms-eval's results and cost hand-off.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from functools import cache

import torch
from accelerate import Accelerator
from lmms_eval.api.instance import GenerationResult, TokenCounts
from lmms_eval.api.model import lmms
from loguru import logger
from tqdm import tqdm

from collab_eval import cost_handoff, model_args
from collab_eval.edge_pool import EdgePool, default_workers
from collab_eval.families import Family
from collab_eval.pipeline import Limits, Method, SampleInput, SampleResult, run_batches
from collab_eval.policy import Policy
from collab_eval.records import RecordWriteError, SampleRecord, failure_reason, strip_media
from collab_eval.run_session import RunLock, RunPlan, joined, open_run
from collab_eval.run_settings import RunSettings, allowed_args
from collab_eval.server_contract import RunCaches
from model_adapters.server import ServerModel, pick_device
from model_adapters.task_documents import media_problem, without_media


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


class CollabAdapter(lmms):
    model_id = "collab"  # the name users pass to --model; set per family by adapter_class
    server_class: type[ServerModel] = ServerModel
    default_pretrained: str | None = None  # the family's first reference checkpoint

    def __init__(self, **given):
        super().__init__()
        # Every model arg is checked before anything loads (collab_eval.run_settings declares
        # them); a message names the arg, its value and what is allowed.
        try:
            self.args = RunSettings.parse(given, self.server_class.family_args, pretrained=self.default_pretrained)
            args = self.args
            self.method = Method(Policy(args.policy, args.threshold, args.rate, args.seed), args.codec, args.score,
                                 args.locator, args.highres, record_map=args.record_map)
        except ValueError as err:
            raise model_args.ModelArgError(f"{self.model_id}: {err}") from None

        self.accelerator = Accelerator()
        self._rank, self._world_size, local_rank = process_layout(self.accelerator)
        self._device = pick_device(args.device, local_rank, self._world_size, self.model_id)
        # Which run this is: rank 0 decides (a new id, or the run to continue) and locks it before
        # any model loads; every rank follows.
        plan, lock = self._from_rank0(lambda: open_run(args.records_dir, self.model_id, args.of_run(self.model_id),
                                                       run_id=args.run_id, resume=args.resume,
                                                       world_size=self._world_size))
        # A model that fails to load (a missing checkpoint, a layer it lacks, ...) abandons the
        # session: nothing of it stays in records_dir, the lock is released (run_session.joined).
        with joined(args.records_dir, plan, self._rank, lock) as self.session:
            self.server = self.server_class(args.pretrained, name=self.model_id, device=self._device,
                                            dtype=args.dtype, device_map=args.device_map, threads=args.threads,
                                            layer=args.layer, reuse_prefix=args.reuse_prefix, **args.family)
        self.caches = RunCaches()
        self._plain_docs = {}
        logger.info(f"{self.model_id}: run {plan.run_id}{' (resumed)' if plan.resumed else ''}, "
                    f"records -> {self.session.path}")

    def _from_rank0(self, decide) -> tuple[RunPlan, RunLock | None]:
        """Run ``decide`` on rank 0 and give its plan, or the reason it failed, to every rank
        (an exception on rank 0 alone would leave the others waiting forever); rank 0 keeps the lock."""
        box, lock = [None], None
        if self._rank == 0:
            try:
                box[0], log, lock = decide()
                for line in log:
                    logger.warning(f"{self.model_id}: {line}")
            except Exception as err:  # noqa: BLE001  -- sent to every rank, raised there
                box[0] = RunPlan(error=str(err))
        if self._world_size > 1:
            torch.distributed.broadcast_object_list(box, src=0)
        if box[0].error:
            raise ValueError(f"{self.model_id}: {box[0].error}")
        return box[0], lock

    def settings(self) -> dict:
        """The model args that change answers or costs, as the run was started: the record's
        ``settings`` (collab_eval.run_settings, RunSettings.recorded)."""
        return self.args.recorded()

    @classmethod
    def allowed_args(cls) -> list[str]:
        return allowed_args(cls.server_class.family_args)

    @property
    def device(self):
        return self._device

    @property
    def batch_size(self) -> int:  # as lmms-eval's own adapters expose it
        return self.args.batch_size

    @property
    def rank(self):
        return self._rank

    @property
    def world_size(self):
        return self._world_size

    @property
    def run_id(self) -> str:
        return self.session.run_id

    def loglikelihood(self, requests):
        raise NotImplementedError(f"{self.model_id} only generates (generate_until tasks)")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError(f"{self.model_id} does not support multi-round generation")

    def generate_until(self, requests) -> list[GenerationResult]:
        started, run_now = time.perf_counter(), 0
        progress = tqdm(total=len(requests), disable=self.rank != 0, desc=self.model_id)
        # Not yet answered in this run (a resumed run's recorded samples and lmms-eval's padding
        # repeats of a rank's last request are), each once, in request order.
        pending = {}
        for request in requests:
            _, _, _, doc_id, task, _ = request.args
            if (task, int(doc_id)) not in self.session.answered:
                pending.setdefault((task, int(doc_id)), request)
        pending = list(pending.values())
        args_of = {}

        def batches():
            for first in range(0, len(pending), self.batch_size):
                batch = pending[first:first + self.batch_size]
                samples = [self.sample_input(*request.args) for request in batch]
                args_of.update({id(sample): request.args for sample, request in zip(samples, batch)})
                yield samples

        # The edge's threads read and encode the next batches while the server runs this one's passes.
        workers = self.args.edge_workers
        if workers is None:  # the default: the CPUs the model's threads leave free
            workers = default_workers(self.args.threads)
        with EdgePool(workers) as edge:
            ahead = max(1, -(-workers // self.batch_size))  # batches enough to keep the threads busy
            for result in run_batches(self.server, batches(), method=self.method, caches=self.caches, edge=edge,
                                      ahead=ahead):
                try:
                    self.session.write(self.record(args_of.pop(id(result.sample)), result))
                except RecordWriteError as err:
                    logger.error(f"{self.model_id}: {err}")
                    raise
                run_now += 1
                progress.update(1)
        progress.update(len(requests) - progress.n)
        results, handed = [], []
        for request in requests:
            _, _, _, doc_id, task, split = request.args
            done = self.session.answered[task, int(doc_id)]
            handed.append(cost_handoff.sample_key(task, split, doc_id))
            cost_handoff.remember(handed[-1], cost_handoff.SampleCosts.of(task, done))
            results.append(GenerationResult(done.answer, CostCounts(
                output_tokens=done.output_tokens, bytes_total=done.bytes_total, flops_total=done.flops_total,
                retransmitted=done.retransmitted, run_id=self.run_id)))
        if results:
            progress.set_postfix(retx=f"{sum(r.token_counts.retransmitted for r in results) / len(results):.2f}",
                                 bytes=f"{sum(r.token_counts.bytes_total for r in results) / len(results):.0f}")
        progress.close()
        self.session.finish(requests=len(requests), run_now=run_now, seconds=time.perf_counter() - started)
        cost_handoff.publish(handed, self.world_size, self.rank, time.perf_counter() - started,
                             sum(r.token_counts.output_tokens or 0 for r in results))
        return results

    def sample_input(self, context, gen_kwargs, doc_to_visual, doc_id, task, split) -> SampleInput:
        docs = self.task_dict[task][split]
        return SampleInput(key=f"{task}/{doc_id}", scope=task, question=self.server.without_image_placeholders(context),
                           limits=Limits.from_gen_kwargs(gen_kwargs, cap=self.args.max_new_tokens),
                           visuals=lambda: doc_to_visual(docs[doc_id]))

    def record(self, args: tuple, result: SampleResult) -> SampleRecord:
        """The sample's record: who asked and how, then the pipeline's outcome or why it failed."""
        context, _, _, doc_id, task, split = args
        docs = self.task_dict[task][split]
        if (task, split) not in self._plain_docs:
            self._plain_docs[task, split] = without_media(docs)
        header = dict(run_id=self.run_id, task=task, doc_id=doc_id, question=context, model=self.args.pretrained,
                      codec=str(self.method.codec), policy=self.method.policy.name,
                      policy_args=self.method.policy.args(), rank=self._rank, score_name=self.method.score,
                      settings=self.settings(),
                      doc=strip_media(self._plain_docs[task, split][doc_id]))
        if result.error is None:
            return SampleRecord(**header, **vars(result.outcome))
        error = media_problem(docs, doc_id) or failure_reason(result.error)
        logger.warning(f"{self.model_id}: {task} doc {doc_id} failed at {result.failed_step}: {error}")
        # What it sent and computed up to the failure (pipeline.failure), answer "" (scored as wrong).
        outcome = vars(result.outcome) if result.outcome is not None else {"seconds": result.seconds}
        return SampleRecord(**header, **{**outcome, "answer": ""}, error=error, failed_step=result.failed_step)


def process_layout(accelerator) -> tuple[int, int, int]:
    """(rank, world size, local rank). lmms-eval shards requests by torch.distributed's
    ranks; Accelerator reports a single process on a CPU-only torchrun launch, so the
    process group, when there is one, is the authority."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return (torch.distributed.get_rank(), torch.distributed.get_world_size(),
                int(os.environ.get("LOCAL_RANK", accelerator.local_process_index)))
    return accelerator.process_index, accelerator.num_processes, accelerator.local_process_index


@cache
def adapter_class(family: Family) -> type[CollabAdapter]:
    """The lmms-eval model class of a registered family: CollabAdapter with the family's model
    id, server class and default checkpoint (one class per family and process)."""
    name = "".join(part.capitalize() for part in family.name.split("_"))
    return type(f"Collab{name}", (CollabAdapter,), {
        "model_id": family.model_id, "server_class": family.server_class(),
        "default_pretrained": family.pretrained, "family": family,
        "__module__": "model_adapters.registered", "__qualname__": family.name,
        "__doc__": f"--model {family.model_id}: {family.title or family.name} (collab_eval.families)."})
