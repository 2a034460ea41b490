"""The lmms-eval model class of every collab adapter: requests in, results and costs out.

It only translates: model args into a checked method and a loaded server (a family's
``ServerModel``), lmms-eval's requests into pipeline samples, the pipeline's results into
records (through the run session) and into lmms-eval's results and cost hand-off.
"""
from __future__ import annotations

import inspect
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

from collab_eval import cost_handoff, locators, model_args, scores
from collab_eval.checkpoints import checkpoint_identity, resolve
from collab_eval.edge import Codec
from collab_eval.edge_pool import EdgePool, default_workers
from collab_eval.families import Family
from collab_eval.pipeline import Limits, Method, SampleInput, SampleResult, run_batches
from collab_eval.policy import POLICIES, Policy
from collab_eval.records import RecordWriteError, SampleRecord, failure_reason, strip_media
from collab_eval.run_session import RunLock, RunPlan, RunSession, open_run
from collab_eval.server_contract import RunCaches
from model_adapters.server import DTYPES, ServerModel, pick_device
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

    def __init__(self, pretrained: str | None = None, policy: str = "threshold", threshold: float = 1.0,
                 rate: float = 0.5,
                 score: str = "max", codec: str = "png", layer: int | None = None, seed: int = 0,
                 records_dir: str = "collab_records", max_new_tokens: int = 32, resume: bool = False,
                 run_id: str | None = None, device: str | None = None, device_map: str | None = None,
                 dtype: str = "auto", threads: int = 1, reuse_prefix: bool | str = True, batch_size: int | str = 1,
                 max_batch_size: int | None = None, locator: str = "rel_att", highres: bool | str = False,
                 edge_workers: int | str | None = None, record_map: bool | str = False, **family_args):
        super().__init__()
        pretrained = self.default_pretrained if pretrained is None else pretrained
        # Every argument is checked before anything loads; a message names the arg, its value
        # and what is allowed.
        try:
            if pretrained is None:
                raise model_args.ModelArgError("pretrained is required (a checkpoint path, hub id or short name)")
            unknown = sorted(set(family_args) - set(inspect.signature(self.server_class.family_args).parameters))
            if unknown:
                raise model_args.ModelArgError(f"unknown model arg(s) {unknown}; allowed: {self.allowed_args()}")
            family = self.server_class.family_args(**family_args)
            self.method = Method(Policy(model_args.one_of("policy", policy, POLICIES),
                                        model_args.number(
                                            "threshold", threshold, infinite_ok=True,
                                            what="a number of nats (inf: never retransmit, -inf: always)"),
                                        model_args.number("rate", rate, what="a number in [0, 1]"),
                                        model_args.integer("seed", seed)),
                                 Codec.parse(str(codec)), scores.check_name(score),
                                 *checked_locator(locator, highres),
                                 record_map=model_args.boolean("record_map", record_map))
            server_args = dict(dtype=model_args.one_of("dtype", dtype, tuple(DTYPES)), device_map=device_map,
                               threads=model_args.integer("threads", threads, minimum=0),
                               layer=model_args.optional_integer("layer", layer, minimum=0),
                               reuse_prefix=model_args.boolean("reuse_prefix", reuse_prefix))
            self.max_new_tokens = model_args.integer("max_new_tokens", max_new_tokens, minimum=1)
            self.server_args, self.family = server_args, family  # for settings()
            resume, run_id = model_args.boolean("resume", resume), model_args.run_id("run_id", run_id)
            self.pretrained = model_args.local_path_exists("pretrained", resolve(str(pretrained)))
            records_dir = model_args.writable_directory("records_dir", records_dir)
            self.batch_size = model_args.integer("batch_size", 1 if str(batch_size).strip() == "auto" else batch_size,
                                                 minimum=1)
            self.edge_workers = (default_workers(server_args["threads"]) if edge_workers is None
                                 else model_args.integer("edge_workers", edge_workers, minimum=0))
        except ValueError as err:
            raise model_args.ModelArgError(f"{self.model_id}: {err}") from None
        policy_ = self.method.policy
        run_settings = {"adapter": self.model_id, "model": checkpoint_identity(self.pretrained), "policy": policy_.name,
                        **policy_.args(), "codec": str(self.method.codec), "score": self.method.score,
                        "layer": server_args["layer"], "max_new_tokens": self.max_new_tokens,
                        "dtype": server_args["dtype"], "reuse_prefix": server_args["reuse_prefix"], **family,
                        **self.settings()}

        self.accelerator = Accelerator()
        self._rank, self._world_size, local_rank = process_layout(self.accelerator)
        self._device = pick_device(device, local_rank, self._world_size, self.model_id)
        # Which run this is: rank 0 decides (a new id, or the run to continue) and locks it before
        # any model loads; every rank follows.
        plan, lock = self._from_rank0(lambda: open_run(records_dir, self.model_id, run_settings, run_id=run_id,
                                                       resume=resume, world_size=self._world_size))
        self.session = RunSession.join(records_dir, plan, self._rank, lock)
        self.server = self.server_class(self.pretrained, name=self.model_id, device=self._device,
                                        **server_args, **family)
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
        """Every model arg that changes answers or costs, as the run was started: what tells
        this run's system apart in report and check (collab_eval.systems). Left out: device,
        threads, batch sizes (the same answers and FLOPs), the records' place and run identity;
        the policy's own τ, rate and seed are the record's ``policy_args``; edge_workers (the
        same records)."""
        out = {"codec": str(self.method.codec)}
        if self.method.policy.name == "threshold":  # only a threshold run's answers depend on the score
            out["score"] = self.method.score
        out.update(layer=self.server_args["layer"], dtype=self.server_args["dtype"], max_new_tokens=self.max_new_tokens,
                   reuse_prefix=self.server_args["reuse_prefix"],  # reuse_prefix: the FLOPs counted
                   locator=self.method.locator, highres=self.method.highres)
        return {**out, **self.family}

    @classmethod
    def allowed_args(cls) -> list[str]:
        shared = inspect.signature(CollabAdapter.__init__).parameters
        family = inspect.signature(cls.server_class.family_args).parameters
        return sorted(p for p in [*shared, *family] if p not in ("self", "family_args"))

    @property
    def device(self):
        return self._device

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
        with EdgePool(self.edge_workers) as edge:
            ahead = max(1, -(-self.edge_workers // self.batch_size))  # batches enough to keep the threads busy
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
                           limits=Limits.from_gen_kwargs(gen_kwargs, cap=self.max_new_tokens),
                           visuals=lambda: doc_to_visual(docs[doc_id]))

    def record(self, args: tuple, result: SampleResult) -> SampleRecord:
        """The sample's record: who asked and how, then the pipeline's outcome or why it failed."""
        context, _, _, doc_id, task, split = args
        docs = self.task_dict[task][split]
        if (task, split) not in self._plain_docs:
            self._plain_docs[task, split] = without_media(docs)
        header = dict(run_id=self.run_id, task=task, doc_id=doc_id, question=context, model=self.pretrained,
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


def checked_locator(name, highres) -> tuple[str, bool]:
    """(locator, highres), checked before anything loads: the locator must be installed
    (collab_eval.locators) and highres applies to map locators only."""
    locator = locators.load(str(name))
    tiled = model_args.boolean("highres", highres)
    if tiled and locator.kind != "map":
        raise model_args.ModelArgError(f"highres=true tiles a map locator's maps; locator={name} returns a box")
    return str(name), tiled


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
