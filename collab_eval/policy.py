"""Retransmission policies: when does the server ask the edge for a crop?"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

POLICIES = ("threshold", "random", "always", "never")


@dataclass(frozen=True)
class Policy:
    name: str = "threshold"
    threshold: float = 1.0  # nats, for "threshold"
    rate: float = 0.5  # probability, for "random"
    seed: int = 0

    def __post_init__(self):
        if self.name not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.name!r}")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"rate must be in [0, 1], got {self.rate}")

    def retransmit(self, score: float, sample_key: str) -> bool:
        if self.name == "always":
            return True
        if self.name == "never":
            return False
        if self.name == "threshold":
            return score > self.threshold
        return uniform(sample_key, self.seed) < self.rate


def uniform(sample_key: str, seed: int) -> float:
    """A uniform draw in [0, 1) fixed by (sample, seed): the same on every rank, run and
    machine, so a random-baseline run is reproducible and independent of sharding."""
    digest = hashlib.sha256(f"{seed}:{sample_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64
