"""Data parallel the lmms-eval way: two processes under accelerate launch (CPU here),
each writing its own record file; together they hold every sample exactly once."""
import sys
from pathlib import Path

import pytest

from collab_eval.cost_handoff import cost_means
from collab_eval.records import read_records
from tests.helpers import check_run, evaluate

# Every test here starts lmms-eval: the fast tier (-m 'not slow') skips the module.
pytestmark = pytest.mark.slow

ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
TASKS = ("collab_textvqa_mini", "collab_pope_mini")
LIMIT = 6  # per task: three documents of each on each rank


def test_two_processes_shard_the_samples_and_write_one_record_file_each(tmp_path, tiny_llava_path):
    launcher = (ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "lmms_eval")
    run = evaluate("collab_llava", f"pretrained={tiny_llava_path},policy=always,records_dir={tmp_path / 'records'}",
                   ",".join(TASKS), tmp_path, launcher=launcher, extra=("--limit", str(LIMIT)))
    # Together: every document once, lmms-eval's means equal to the records' (check_run).
    check_run(run, TASKS, LIMIT)

    files = sorted((tmp_path / "records").glob("*.jsonl"))
    assert [f.name.rsplit(".", 2)[-2] for f in files] == ["rank0", "rank1"]
    assert len({f.name.split(".rank")[0] for f in files}) == 1  # one run name shared by both ranks
    per_rank = [read_records([f]) for f in files]
    assert [len(recs) for recs in per_rank] == [LIMIT * len(TASKS) // 2] * 2
    assert [{r.rank for r in recs} for recs in per_rank] == [{0}, {1}]
    keys = [(r.task, r.doc_id) for recs in per_rank for r in recs]
    assert sorted(keys) == sorted({(t, i) for t in TASKS for i in range(LIMIT)})

    results, pooled = run.results["results"], cost_means(run.results)  # pooled: rank 0 logs both ranks' samples
    for task in TASKS:
        recs = [r for recs in per_rank for r in recs if r.task == task]
        assert results[task]["bytes_total,none"] == sum(r.bytes_total for r in recs) / LIMIT
        assert results[task]["flops_total,none"] == sum(r.flops_total for r in recs) / LIMIT
        assert pooled[task]["samples"] == LIMIT
        assert pooled[task]["bytes_total"] == results[task]["bytes_total,none"]
