"""FLOPs of a pass counted as torch executes it (``torch.utils.flop_counter.FlopCounterMode``).

The locators' gradient passes (grad_att, pure_grad) are counted this way rather than from a
formula: a backward pass's cost depends on which tensors autograd needs (here: activations
only, the weights are frozen), and the counter sees exactly what ran, forward and backward.
On CPU the fused SDPA kernels count zero unless mapped (DESIGN.md): both directions are
mapped here to torch's own attention formulas. GPU kernels (flash, memory-efficient, cuDNN)
are counted by torch itself.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

T = TypeVar("T")

CPU_SDPA = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
        lambda q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs: sdpa_flop_count(q_shape, k_shape, v_shape),
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward:
        lambda grad_out_shape, q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs:
            sdpa_backward_flop_count(grad_out_shape, q_shape, k_shape, v_shape),
}


def counted(call: Callable[[], T]) -> tuple[T, int]:
    """``call()``'s result and the FLOPs torch executed for it, forward and backward."""
    with FlopCounterMode(display=False, custom_mapping=CPU_SDPA) as counter:
        result = call()
    return result, int(counter.get_total_flops())
