"""Data parallel the lmms-eval way: two processes under accelerate launch (CPU here),
each writing its own record file; together they hold every sample exactly once."""
import sys
from pathlib import Path

from collab_eval.cost_handoff import cost_means
from collab_eval.records import read_records
from tests.helpers import results_json, run_lmms_eval

ACCELERATE = str(Path(sys.executable).with_name("accelerate"))


def test_two_processes_shard_the_samples_and_write_one_record_file_each(tmp_path, tiny_llava_path):
    out = tmp_path / "out"
    launcher = (ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "lmms_eval")
    proc = run_lmms_eval("collab_llava", f"pretrained={tiny_llava_path},policy=always,records_dir={out / 'records'}",
                         "collab_textvqa_mini,collab_pope_mini", out, launcher=launcher)
    assert proc.returncode == 0, proc.stderr[-3000:]

    files = sorted((out / "records").glob("*.jsonl"))
    assert [f.name.rsplit(".", 2)[-2] for f in files] == ["rank0", "rank1"]
    assert len({f.name.split(".rank")[0] for f in files}) == 1  # one run name shared by both ranks
    per_rank = [read_records([f]) for f in files]
    assert all(len(recs) == 16 for recs in per_rank)
    keys = [(r["task"], r["doc_id"]) for recs in per_rank for r in recs]
    assert sorted(keys) == sorted({(t, i) for t in ("collab_textvqa_mini", "collab_pope_mini") for i in range(16)})

    run = results_json(out)
    results, pooled = run["results"], cost_means(run)  # pooled: rank 0 logs both ranks' samples
    for task in ("collab_textvqa_mini", "collab_pope_mini"):
        recs = [r for recs in per_rank for r in recs if r["task"] == task]
        assert results[task]["bytes_total,none"] == sum(r["bytes_total"] for r in recs) / 16
        assert results[task]["flops_total,none"] == sum(r["flops_total"] for r in recs) / 16
        assert pooled[task]["samples"] == 16
        assert pooled[task]["bytes_total"] == results[task]["bytes_total,none"]
