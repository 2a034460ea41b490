"""Running the real lmms-eval command line from tests, reading what it wrote, and the
invariants every run and every record must hold."""
import glob
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from collab_eval import families
from collab_eval.pipeline import Limits, Method, RunCaches, SampleInput, run_batch
from collab_eval.records import FLOP_PARTS, Outcome, SampleRecord, finite, read_records
from collab_eval.run_settings import family_arg_defaults
from collab_eval.scores import BUILTIN_ORDER
from collab_eval.scores import installed as installed_scores
from collab_eval.shipped import TASKS_DIR
from collab_eval.systems import DEFAULTS
from collab_eval.uncertainty import AGGREGATES, aggregate

LMMS_EVAL = str(Path(sys.executable).with_name("lmms-eval"))
RECORD_FIELDS = set(SampleRecord.model_fields)
# The tiny LLaVA command-line runs (conftest.tiny_llava_run): every local task, the first
# MINI_LIMIT documents of each.
MINI_TASKS = ("collab_textvqa_mini", "collab_textvqa_mini_ocr", "collab_pope_mini")
MINI_LIMIT = 4
# Every registered family with a tiny checkpoint (collab_eval.families): what family-parametrised
# tests run over, so a new family is tested by registering it.
FAMILIES = [f.name for f in families.all_families() if f.tiny]
TRAINED = {f.name: f.trained for f in families.all_families() if f.trained}  # family -> its shipped checkpoint


def qwen2_vl_kind(strict: bool = False) -> list[str]:
    """The registered families (FAMILIES) whose server is Qwen2-VL's or a subclass of it (strict:
    the subclasses only: Qwen2.5-VL, Qwen3-VL, ...)."""
    from model_adapters.qwen2_vl import Qwen2VLServer
    servers = {name: families.get(name).server_class() for name in FAMILIES}
    return [name for name, server in servers.items()
            if issubclass(server, Qwen2VLServer) and not (strict and server is Qwen2VLServer)]


def token_side(family: str) -> int:
    """The side in pixels of one language token of a Qwen2-VL-kind family (patch x merge: 28 for
    Qwen2-VL and Qwen2.5-VL, 32 for Qwen3-VL), read from its tiny checkpoint's image processor."""
    from transformers import AutoImageProcessor

    from collab_eval.checkpoints import resolve
    processor = AutoImageProcessor.from_pretrained(resolve(families.get(family).tiny_name))
    return processor.patch_size * processor.merge_size


def small_budget(family: str) -> dict:
    """Server args that keep a tiny checkpoint's images small in tests: for every family that
    takes ``max_pixels`` (Qwen2-VL and its kind), a pixel budget of 4 x 4 language tokens per
    square image (112 x 112 for Qwen2-VL and Qwen2.5-VL, 128 x 128 for Qwen3-VL: at 112 x 112
    its crops were cheaper than stage 1's prefill); none otherwise."""
    if "max_pixels" not in family_arg_defaults(families.get(family).server_class().family_args):
        return {}
    return {"max_pixels": (4 * token_side(family)) ** 2}


def property_examples(written_for_200: int) -> int:
    """A property test's example count under the loaded hypothesis profile (tests/conftest.py):
    the count it was written with at the "ci" profile's 200, scaled with the profile."""
    from hypothesis import settings
    return max(1, round(written_for_200 * settings.default.max_examples / 200))


def run_lmms_eval(model: str, model_args: str, tasks: str, out: Path, include_path: Path = TASKS_DIR,
                  extra: tuple = (), launcher: tuple = ()) -> subprocess.CompletedProcess:
    """lmms-eval logs an exception and exits 0 unless --verbosity DEBUG: tests run it in
    DEBUG so that its exit status says whether the run failed."""
    cmd = [*launcher] if launcher else [LMMS_EVAL]
    cmd += ["--model", model, "--model_args", model_args, "--tasks", tasks,
            "--include_path", str(include_path), "--output_path", str(out), "--log_samples",
            "--verbosity", "DEBUG", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), timeout=900)


@dataclass
class Run:
    """What one lmms-eval run wrote: its output dir, results.json and per-sample records."""
    out: Path
    results: dict
    records: list[dict]


def evaluate(model: str, model_args: str, tasks: str, out: Path, **kwargs) -> Run:
    """run_lmms_eval that must succeed; records go to out/records (the caller puts
    records_dir=<out>/records in model_args)."""
    proc = run_lmms_eval(model, model_args, tasks, out, **kwargs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Run(out, results_json(out), records(out / "records"))


@dataclass(frozen=True)
class Spec:
    """One run of a shared lmms-eval process (evaluate_many): run_lmms_eval's arguments as data.
    ``options``: further command-line options as flag/value pairs, e.g. ("--limit", "2")."""
    model: str
    model_args: str
    tasks: str
    out: Path
    include_path: Path = TASKS_DIR
    options: tuple = ()

    def config(self) -> dict:
        """This run as an entry of lmms-eval's --config file: the keys are the command line's own
        options (argparse's dest), the values what argparse makes of them (--limit: a float)."""
        entry = {"model": self.model, "model_args": self.model_args, "tasks": self.tasks,
                 "include_path": str(self.include_path), "output_path": str(self.out), "log_samples": True}
        assert len(self.options) % 2 == 0, self.options
        for flag, value in zip(self.options[::2], self.options[1::2]):
            assert flag.startswith("--") and flag not in ("--config", "--verbosity"), flag
            entry[flag[2:]] = float(value) if flag == "--limit" else str(value)
        return entry


def run_lmms_eval_many(specs: list[Spec], config: Path) -> subprocess.CompletedProcess:
    """Several runs in ONE lmms-eval process, through its own command line: ``lmms-eval --config
    FILE`` with one entry per run (lmms-eval runs a list of configs one after another, each
    through the same cli_evaluate_single a plain command runs). Saves a process start (torch,
    transformers and lmms-eval imported once) per run beyond the first; each run still indexes
    the tasks, loads its model and writes its own outputs. --verbosity DEBUG: the first run that
    fails stops the process with a failure exit (run_lmms_eval's reason)."""
    assert len({spec.out for spec in specs}) == len(specs), "each run needs its own output folder"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump([spec.config() for spec in specs], sort_keys=False))
    return subprocess.run([LMMS_EVAL, "--config", str(config), "--verbosity", "DEBUG"], capture_output=True,
                          text=True, env=os.environ.copy(), timeout=900 * len(specs))


def evaluate_many(specs: list[Spec], config: Path | None = None) -> list[Run]:
    """run_lmms_eval_many that must succeed: each spec's Run, in order (records from
    <out>/records, where the caller's model_args put them; none for lmms-eval's own adapters).
    ``config``: where the config file goes (default: beside the first run's output folder)."""
    first = Path(specs[0].out)
    proc = run_lmms_eval_many(specs, config or first.parent / f"{first.name}.lmms-eval-config.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [Run(spec.out, results_json(spec.out), records(spec.out / "records")) for spec in specs]


def results_json(out: Path) -> dict:
    paths = glob.glob(str(out / "**" / "*_results.json"), recursive=True)
    assert len(paths) == 1, f"expected one results.json under {out}, found {paths}"
    return json.loads(Path(paths[0]).read_text())


def samples(out: Path, task: str) -> list[dict]:
    paths = glob.glob(str(out / "**" / f"*_samples_{task}.jsonl"), recursive=True)
    assert len(paths) == 1, f"expected one samples file for {task} under {out}, found {paths}"
    return [json.loads(line) for line in Path(paths[0]).read_text().splitlines() if line.strip()]


def records(records_dir: Path) -> list[dict]:
    """The run's records as read back (typed), each as a dict of its fields for the tests' checks."""
    return [record.model_dump() for record in read_records(sorted(Path(records_dir).glob("*.jsonl")))]


def run_one(server, images: list, question: str, *, method: Method, limits: Limits, key: str = "t/0",
            scope: str = "t", caches: RunCaches | None = None) -> Outcome:
    """One sample through the pipeline's run_batch (as the adapter runs it): its outcome,
    or the error that failed it, raised."""
    sample = SampleInput(key=key, scope=scope, question=question, limits=limits, visuals=lambda: images)
    (result,) = run_batch(server, [sample], method=method, caches=caches if caches is not None else RunCaches())
    if result.error is not None:
        raise result.error
    return result.outcome


def check_record(record, method: Method | None = None, family: str | None = None) -> None:
    """The invariants of one sample's record, whatever the family, task or policy: totals are
    the sum of their parts, the score is the aggregate of the token entropies, and a sample
    costs exactly what its policy sent. ``record``: a dict as read from a records file or a
    SampleRecord (its family: ``family`` where given, else the model id its run id starts with,
    as collab names runs), or the pipeline's Outcome with the Method it ran under and its
    ``family`` (a family's name or model id: the server's ``name``)."""
    if isinstance(record, Outcome) and not isinstance(record, SampleRecord):
        assert method is not None and family is not None, \
            "an Outcome does not say its policy or family: pass its Method and family"
        r = {**record.model_dump(), "policy": method.policy.name, "score_name": method.score,
             "settings": {"locator": method.locator, "highres": method.highres}, "error": None}
    else:
        r = record.model_dump() if isinstance(record, SampleRecord) else record
        assert set(r) == RECORD_FIELDS, set(r) ^ RECORD_FIELDS
    assert r["bytes_total"] == r["bytes_global"] + r["bytes_request"] + r["bytes_local"] + r["bytes_tiles"]
    assert set(r["flops"]) == set(FLOP_PARTS) and r["flops_total"] == sum(r["flops"].values())
    if r["error"]:  # a failed sample is scored as wrong and costs what it sent and computed before failing
        check_failed(r)
        return
    assert r["bytes_global"] > 0 and r["flops"]["vision"] > 0 and r["flops"]["prefill"] > 0
    assert r["answer_stage1"] is not None and len(r["min_entropy"]) == len(r["shannon_entropy"]) >= 1
    for how in AGGREGATES:
        assert r["scores"][how] == pytest.approx(finite(aggregate(r["min_entropy"], how)))
    assert r["score"] == r["scores"][r["score_name"]]
    # Every installed score, in recording order; a plug-in's bad value is missing (never a built-in's).
    assert list(r["scores"]) == [name for name in installed_scores().names() if name in r["scores"]]
    assert set(BUILTIN_ORDER) <= set(r["scores"])
    assert r["scores"]["shannon"] == pytest.approx(max(r["shannon_entropy"]), rel=1e-6)
    if "codec" in r:  # a record (not a bare pipeline outcome): the settings it was run with
        assert r["settings"]["codec"] == r["codec"]
        own = set(r["settings"]) - {*DEFAULTS, "score"}  # beyond the shared ones: the family's own args only
        if own:
            assert own <= set(family_arg_defaults(families.get(family or run_family(r)).server_class().family_args))
    if r["policy"] == "never":
        assert not r["retransmitted"]
    if r["policy"] in ("always", "tiles"):
        assert r["retransmitted"]
    if not r["retransmitted"]:
        assert r["answer"] == r["answer_stage1"] and r["answer_stage2"] is None and r["roi"] is None
        assert r["bytes_total"] == r["bytes_global"] and r["bytes_request"] == r["bytes_local"] == 0
        assert r["flops"]["generic"] == r["flops"]["locate"] == r["flops"]["stage2"] == r["bytes_tiles"] == 0
        return
    assert r["answer"] == r["answer_stage2"] is not None
    assert r["bytes_local"] > 0 and r["flops"]["stage2"] > 0
    # Stage 2 continues from stage 1's prefix (the global image's positions): it encodes its own
    # images (the crop, or four tiles) and prefills their tokens, the question and the answer.
    # Where the edge sends every image as the processor sizes it (sends == "processor"), the
    # crop costs what the global cost, so stage 2 costs more than stage 1's prefill. Where it
    # sends each image at its own fit (LLaVA-NeXT: a small crop has fewer tiles than a large
    # global) that does not hold; stage 2's own images are checked against the processor's
    # layout by that family's tests (tests/test_llava_next_geometry.py).
    if families.get(family or run_family(r)).server_class().sends == "processor":
        assert r["flops"]["stage2"] > r["flops"]["prefill"], (r["model"], r["flops"])
    if r["policy"] == "tiles":  # four tiles, no request, no RoI, no generic map
        assert r["bytes_request"] == 0 and r["roi"] is None and r["flops"]["generic"] == 0
    else:
        assert r["bytes_request"] == 16
        x0, y0, x1, y1 = r["roi"]
        assert 0 <= x0 < x1 <= r["image_size"][0] and 0 <= y0 < y1 <= r["image_size"][1]
        if r["bytes_tiles"]:  # highres: every pass over the tiles (rel_att's generic ones too) is locate's
            assert r["flops"]["locate"] > 0 and r["flops"]["generic"] == 0 and not r["generic_cached"]
        elif r.get("settings", {}).get("locator", "rel_att") == "rel_att":
            assert (r["flops"]["generic"] == 0) == r["generic_cached"]  # a cached map was paid for before
        else:  # only rel_att reads the generic prompt's map; the others' passes are their own part
            assert r["flops"]["generic"] == 0 and not r["generic_cached"]


FAILED_STEPS = ("read", "edge_global", "stage1", "gate", "locate", "edge_local", "stage2", "record")


def check_failed(r: dict) -> None:
    """A failed record's invariants: answer "" and, by the step it failed in, the costs of every
    step before it (stage 1 ran: its FLOPs and answer are there; a crop was sent: its bytes)."""
    assert r["answer"] == "", r
    step = r.get("failed_step")
    assert step in FAILED_STEPS, step
    if step == "record":  # failed at writing its record: it had finished every step
        return
    after = FAILED_STEPS.index(step)
    if after <= FAILED_STEPS.index("edge_global"):  # nothing reached the server
        assert r["flops_total"] == 0 and r["answer_stage1"] is None and r["bytes_local"] == 0
        if step == "read":
            assert r["bytes_total"] == 0
        return
    assert r["bytes_global"] > 0 and r["bytes_global"] == sum(r["bytes_global_images"])
    if step == "stage1":  # the global image was sent, no answer came back
        assert r["answer_stage1"] is None and r["bytes_total"] == r["bytes_global"]
        return
    assert r["answer_stage1"] is not None and r["flops"]["vision"] > 0 and r["flops"]["prefill"] > 0
    if step == "gate":
        assert r["bytes_total"] == r["bytes_global"] and r["flops"]["stage2"] == 0
        return
    assert r["retransmitted"] and r["answer_stage2"] is None and r["flops"]["stage2"] == 0
    if step == "stage2":  # the crop was sent: its request and bytes are counted
        assert r["bytes_local"] > 0


def run_family(record: dict) -> str:
    """The model id a record's run was started by: a run id collab made is ``<model id>-<time>-<hex>``
    (run_session.new_run_id); a run id given by hand names no family (pass ``family``)."""
    model_id = record["run_id"].partition("-")[0]
    assert model_id in {f.model_id for f in families.all_families()}, \
        f"run {record['run_id']!r} does not start with a registered model id: pass check_record's family"
    return model_id


def check_run(run: Run, tasks: list[str], per_task: int, family: str | None = None) -> None:
    """Every record of the run holds check_record, each task has per_task of them, and
    lmms-eval's aggregates and per-sample logs carry exactly the records' costs."""
    for r in run.records:
        check_record(r, family=family)
    assert sorted({r["task"] for r in run.records}) == sorted(tasks)
    for task in tasks:
        recs = {r["doc_id"]: r for r in run.records if r["task"] == task}
        assert len(recs) == per_task == len([r for r in run.records if r["task"] == task]), task
        metrics = run.results["results"][task]
        for key in ("retransmitted", "bytes_total", "flops_total"):
            assert metrics[f"{key},none"] == pytest.approx(sum(r[key] for r in recs.values()) / per_task), (task, key)
        logged = samples(run.out, task)
        assert sorted(s["doc_id"] for s in logged) == sorted(recs)
        for s in logged:
            counts = s["token_counts"][0]
            assert counts["bytes_total"] == recs[s["doc_id"]]["bytes_total"], (task, s["doc_id"])
            assert counts["flops_total"] == recs[s["doc_id"]]["flops_total"], (task, s["doc_id"])
