"""The timing benchmark's memory measurement sees what a block allocates; the training-step
benchmark's arithmetic takes each family's best round against LLaVA's."""
import gc

import pytest
import torch

from collab_eval.lab.timing import peak_rise
from collab_eval.lab.train_timing import step_costs


def test_peak_rise_sees_an_allocation_on_the_cpu():
    with peak_rise(cuda=False) as rise:
        block = torch.ones(64 * 2**20, dtype=torch.uint8)  # 64 MiB, written, alive to the block's end
    assert 56 <= rise() <= 80, rise()
    del block
    with peak_rise(cuda=False) as nothing:
        torch.ones(16)
    assert nothing() < 8, nothing()


def test_peak_rise_is_not_hidden_by_earlier_garbage_freed_inside_the_block():
    class Cycle:
        pass
    garbage = Cycle()
    garbage.itself, garbage.tensor = garbage, torch.ones(64 * 2**20, dtype=torch.uint8)
    del garbage  # 64 MiB resident until a collection finds the cycle
    with peak_rise(cuda=False) as rise:
        gc.collect()  # as an automatic collection may, at any allocation in the block
        block = torch.ones(64 * 2**20, dtype=torch.uint8)
    assert 56 <= rise() <= 80, rise()
    del block


def test_step_costs_take_each_familys_best_round_against_llavas():
    costs = {c.family: c for c in step_costs({"llava": [0.5, 0.4], "qwen2-vl": [0.9, 0.8]},
                                             {"llava": 2500, "qwen2-vl": 1500})}
    assert costs["llava"].seconds == 0.4 and costs["llava"].ratio == 1.0
    assert costs["qwen2-vl"].seconds == 0.8 and abs(costs["qwen2-vl"].ratio - 2.0) < 1e-12
    assert abs(costs["qwen2-vl"].reference_steps - 3000) < 1e-9


def test_step_costs_name_a_missing_reference():
    with pytest.raises(ValueError, match="'llava' was not measured"):
        step_costs({"qwen2-vl": [0.9]}, {"qwen2-vl": 1500})


def test_the_flop_floor_is_an_always_runs_flops_over_its_stage_one(tmp_path):
    from collab_eval.lab.timing import flop_floor
    from tests.report_records import pope_records, write_run
    records = pope_records()  # stage 1: 10 FLOPs a sample (vision, projector, prefill, decode); stage 2: 20 more
    records[0].update(error="UnidentifiedImageError: cannot identify image file", answer_stage2=None,
                      retransmitted=False, flops={**records[0]["flops"], "stage2": 0}, flops_total=10)
    path = next((write_run(tmp_path, records) / "records").glob("*.jsonl"))
    floor = flop_floor([path, tmp_path / "absent.jsonl"])
    assert (floor.total, floor.stage1, floor.ratio) == (30, 10, 3.0)  # the failed sample left out
    assert flop_floor([tmp_path / "absent.jsonl"]) is None


def test_every_family_with_a_tiny_or_trained_checkpoint_is_timed_against_its_adapter(capsys):
    from collab_eval import families
    from collab_eval.families import Family
    from collab_eval.lab.timing import FamilyTiming, print_table, timing_checkpoint
    assert timing_checkpoint(families.get("llava")) == "geometry-llava"
    assert {f.name: timing_checkpoint(f) for f in families.all_families() if f.name != "llava"} == {
        f.name: f.tiny_name for f in families.all_families() if f.name != "llava"}
    plugin = dict(name="plug", server="m:S", reference_checkpoints=("org/plug",), lmms_eval_model="llava_hf")
    assert timing_checkpoint(Family(**plugin, trained="smalldetail-plug")) == "smalldetail-plug"
    assert timing_checkpoint(Family(**plugin)) is None
    print_table([FamilyTiming("llava", "llava_hf", "geometry-llava", {"never": 1.01, "always": 2.05}, 2.5),
                 FamilyTiming("qwen3_vl", "qwen3_vl", "tiny-qwen3-vl", {"always": 1.9}, None)], ["plug"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[-3].split() == ["llava", "llava_hf", "geometry-llava", "1.01", "2.05", "2.50"]
    assert lines[-2].split() == ["qwen3_vl", "qwen3_vl", "tiny-qwen3-vl", "-", "1.90", "-"]
    assert lines[-1].strip() == "not timed (no tiny or trained checkpoint): plug"
