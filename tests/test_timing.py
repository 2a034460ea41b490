"""The timing benchmark's memory measurement sees what a block allocates; the training-step
benchmark's arithmetic takes each family's best round against LLaVA's."""
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


def test_step_costs_take_each_familys_best_round_against_llavas():
    costs = {c.family: c for c in step_costs({"llava": [0.5, 0.4], "qwen2-vl": [0.9, 0.8]},
                                             {"llava": 2500, "qwen2-vl": 1500})}
    assert costs["llava"].seconds == 0.4 and costs["llava"].ratio == 1.0
    assert costs["qwen2-vl"].seconds == 0.8 and abs(costs["qwen2-vl"].ratio - 2.0) < 1e-12
    assert abs(costs["qwen2-vl"].reference_steps - 3000) < 1e-9


def test_step_costs_name_a_missing_reference():
    with pytest.raises(ValueError, match="'llava' was not measured"):
        step_costs({"qwen2-vl": [0.9]}, {"qwen2-vl": 1500})
