"""The key/value cache of a prompt's shared prefix, kept from stage 1 for the passes after it.

Stage 1's prompt, the generic prompt and stage 2's prompt all begin with the same tokens:
the chat template's start and the global image's tokens. Their keys and values depend
only on those tokens (causal attention), so stage 1's are reused instead of recomputed.
This is the one place that relies on transformers' cache layout: a ``DynamicCache`` whose
``layers`` hold ``keys``/``values`` of shape (batch, kv_heads, positions, head_dim).
generate continues from a cache given as ``cache=`` with the full prompt (transformers 5
slices off what the cache already holds; its multimodal models then encode only the
images whose tokens are left).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import DynamicCache


@dataclass(frozen=True)
class Prefix:
    """The first ``length`` positions of a prompt: their token ids (what must match for
    reuse), keys and values per decoder layer, and what else the family needs to know
    about them (``extra``: e.g. the instruction InstructBLIP's Q-Former read)."""
    length: int
    ids: torch.Tensor  # (length,)
    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]
    extra: dict = field(default_factory=dict)

    @classmethod
    def of(cls, cache, ids: torch.Tensor, length: int, row: int = 0, start: int = 0, **extra) -> "Prefix":
        """From ``cache``'s batch row ``row``, whose prompt begins at position ``start`` (a
        left-padded batch: its padding comes first)."""
        layers, end = cache.layers, start + length
        return cls(length, ids[:length].clone(),
                   tuple(layer.keys[row:row + 1, :, start:end].clone() for layer in layers),
                   tuple(layer.values[row:row + 1, :, start:end].clone() for layer in layers), extra)

    def matches(self, ids: torch.Tensor, **extra) -> bool:
        """Whether a prompt with these ids (and family facts) begins with this prefix."""
        return (ids.shape[0] > self.length and torch.equal(ids[:self.length], self.ids)
                and all(_equal(self.extra.get(k), v) for k, v in extra.items()))

    def cache(self, config) -> DynamicCache:
        """A fresh cache holding the prefix (the caller's pass may grow it: the prefix stays)."""
        return DynamicCache(list(zip(self.keys, self.values)), config=config)

    @staticmethod
    def batch_cache(prefixes: list["Prefix"], config) -> DynamicCache:
        """One cache for a batch whose row i continues from ``prefixes[i]``: each row's keys
        and values end at the longest prefix's length, zeros before them (positions the
        batch's attention mask hides)."""
        longest = max(p.length for p in prefixes)

        def padded(tensors: list[torch.Tensor]) -> torch.Tensor:
            return torch.cat([torch.cat([t.new_zeros((*t.shape[:2], longest - t.shape[2], t.shape[3])), t], dim=2)
                              for t in tensors])

        layers = [(padded([p.keys[i] for p in prefixes]), padded([p.values[i] for p in prefixes]))
                  for i in range(len(prefixes[0].keys))]
        return DynamicCache(layers, config=config)


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    return a == b
