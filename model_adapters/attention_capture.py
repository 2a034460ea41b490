"""Attention maps without eager attention: the models run SDPA, and only the rows a map
needs are computed, from the query and key tensors of the one layer that is read.

This is the one place that relies on a transformers detail: its attention interface.
Every attention module of a transformers 5 model (the language model's decoder layers,
CLIP's and Qwen2-VL's vision encoders, InstructBLIP's Q-Former) calls the function
registered under ``config._attn_implementation`` with the module and its query/key/value
after rotary embeddings, GQA's shared key/value heads still unexpanded, and the mask
that kernel expects. The models load under ``KERNEL``, registered here for both
attention and mask creation: it is transformers' own SDPA, plus, for the modules being
probed, the softmax rows of the probed queries (head-averaged). Why not eager: it
materialises every layer's full attention matrix, which costs time in every pass and
memory that grows with layers x heads x prompt^2, while a map reads one row of one layer.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

KERNEL = "collab_sdpa"


class StopForward(Exception):
    """Raised inside a probed layer when nothing after it is needed (a map-only pass)."""


@dataclass
class Probe:
    """What to keep from one attention module's first call: the last query's row
    (``last_only``) or every query's row, head-averaged, shape (batch, queries, keys).
    ``stop``: end the forward pass right after (the row is all the pass is for).
    ``grad``: a gradient pass (locators grad_att): the layer's output for the probed rows is
    computed from ``probs`` (per head, in the autograd graph), so that the gradient of what
    follows with respect to these attention probabilities can be taken (``weigh_by_gradient``)."""
    last_only: bool = True
    stop: bool = False
    weights: torch.Tensor | None = None
    grad: bool = False
    probs: torch.Tensor | None = None


_probes: dict[torch.nn.Module, Probe] = {}


def attention_probs(query, key, mask, scaling) -> torch.Tensor:
    """softmax(q k^T * scaling + mask) per head, in float32, for the given queries
    (b, heads, q, d) against every key (b, kv_heads, k, d). ``mask``: SDPA's (boolean:
    True attends; float: added) or None (no masking: a causal pass is only probed at its
    last query, which sees every key)."""
    groups = query.shape[1] // key.shape[1]
    keys = key.float().repeat_interleave(groups, dim=1) if groups > 1 else key.float()
    scores = query.float() @ keys.transpose(-1, -2) * scaling
    if mask is not None:
        mask = mask[..., -query.shape[2]:, :key.shape[2]]
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
    return scores.softmax(dim=-1)


def _attention(module, query, key, value, attention_mask, **kwargs):
    probe = _probes.get(module)
    if probe is None or probe.weights is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    scaling = kwargs.get("scaling") or query.shape[-1] ** -0.5
    if probe.last_only:  # one extra row of scores; the layer itself runs as usual (or stops)
        probs = attention_probs(query[:, :, -1:], key, attention_mask, scaling)
        probe.weights = probs.mean(dim=1)
        if probe.stop:
            raise StopForward
        out, weights = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
        if not probe.grad:
            return out, weights
        # The last row again, from the probed probabilities: equal to SDPA's, and differentiable in them.
        probe.probs = probs if probs.requires_grad else probs.requires_grad_()
        last = weighted_values(probs, value).transpose(1, 2).to(out.dtype)
        return torch.cat([out[:, :-1], last], dim=1), weights
    # Every row (a small non-causal module, InstructBLIP's Q-Former cross-attention): the
    # probabilities are the layer's own, so it is computed from them, not a second time.
    if getattr(module, "is_causal", False) and attention_mask is None:
        raise ValueError(f"full-row probes are for non-causal attention, not {type(module).__name__}")
    probs = attention_probs(query, key, attention_mask, scaling)
    if probe.grad:
        probe.probs = probs if probs.requires_grad else probs.requires_grad_()
    probe.weights = probs.mean(dim=1)
    return weighted_values(probs, value).transpose(1, 2).contiguous(), None


def weighted_values(probs: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """probs (b, heads, q, k) @ value (b, kv_heads, k, d), GQA's shared heads expanded."""
    groups = probs.shape[1] // value.shape[1]
    values = value.repeat_interleave(groups, dim=1) if groups > 1 else value
    return probs.to(values.dtype) @ values


def weigh_by_gradient(probes: dict[torch.nn.Module, Probe], target: torch.Tensor) -> None:
    """ViCrop's gradient-weighted attention: each ``grad`` probe's ``weights`` become its
    per-head probabilities times the ReLU of their gradient of ``target``, head-averaged."""
    graded = [probe for probe in probes.values() if probe.grad]
    backward_into(target, [probe.probs for probe in graded])
    for probe in graded:
        probe.weights = (probe.probs * probe.probs.grad.clamp(min=0)).mean(dim=1).detach()


def backward_into(target: torch.Tensor, tensors: list[torch.Tensor]) -> None:
    """The gradient of ``target`` into each tensor's ``.grad``, computing no other gradient.
    ``backward(inputs=...)``, not ``autograd.grad``: FlopCounterMode's module tracker
    (flop_measure) fails on ``autograd.grad`` with leaf inputs (torch 2.14)."""
    for tensor in tensors:
        if not tensor.is_leaf:
            tensor.retain_grad()
    target.backward(inputs=tensors)


AttentionInterface.register(KERNEL, _attention)
AttentionMaskInterface.register(KERNEL, sdpa_mask)


@contextmanager
def probing(probes: dict[torch.nn.Module, Probe]):
    """Within the block, the given modules' first calls fill their probes' ``weights``.
    A StopForward raised by a stopping probe ends the block quietly."""
    _probes.update(probes)
    try:
        yield probes
    except StopForward:
        pass
    finally:
        for module in probes:
            _probes.pop(module, None)
