"""Uncertainty of a generated answer, from the raw per-step logits.

Min-entropy of one token is ``-log max_v p(v)`` in nats: it is 0 when the model
puts all its mass on one token and ``log V`` when the distribution is uniform.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

AGGREGATES = ("max", "mean", "first")


@dataclass(frozen=True)
class AnswerUncertainty:
    min_entropy: list[float]  # per generated token, nats
    shannon_entropy: list[float]  # per generated token, nats

    def score(self, how: str) -> float:
        """One number for the whole answer; an empty answer is maximally doubtful."""
        return aggregate(self.min_entropy, how)

    def scores(self) -> dict[str, float]:
        return {how: self.score(how) for how in AGGREGATES}


def token_uncertainties(logits: torch.Tensor) -> AnswerUncertainty:
    """``logits``: (steps, vocab) raw logits of the generated tokens."""
    if logits.ndim != 2:
        raise ValueError(f"logits must be (steps, vocab), got shape {tuple(logits.shape)}")
    log_p = torch.log_softmax(logits.float(), dim=-1)
    min_entropy = -log_p.max(dim=-1).values
    shannon = -(log_p.exp() * log_p).nan_to_num().sum(dim=-1)
    return AnswerUncertainty(min_entropy.tolist(), shannon.tolist())


def aggregate(values: list[float], how: str) -> float:
    if how not in AGGREGATES:
        raise ValueError(f"score aggregation must be one of {AGGREGATES}, got {how!r}")
    if not values:
        return math.inf
    if how == "max":
        return max(values)
    if how == "mean":
        return sum(values) / len(values)
    return values[0]
