"""The timing benchmark's memory measurement sees what a block allocates."""
import torch

from collab_eval.lab.timing import peak_rise


def test_peak_rise_sees_an_allocation_on_the_cpu():
    with peak_rise(cuda=False) as rise:
        block = torch.ones(64 * 2**20, dtype=torch.uint8)  # 64 MiB, written, alive to the block's end
    assert 56 <= rise() <= 80, rise()
    del block
    with peak_rise(cuda=False) as nothing:
        torch.ones(16)
    assert nothing() < 8, nothing()
