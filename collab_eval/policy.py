"""Retransmission policies: when does the server ask the edge for a crop?

``tiles`` is the training-free HD baseline (LLaVA-1.5-HD's idea without its training): the
edge always sends, besides the global image, a 2x2 grid of tiles of the original, each at
the encoder input, and the server answers from all five. It needs no gate and no RoI, but
stage 1 still runs and is recorded (answer, entropies, its FLOPs under the stage-1 parts),
so one tiles run also holds the single-image baseline; the HD answer's own compute is
``flops["stage2"]``.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

POLICIES = ("threshold", "random", "always", "never", "tiles")


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

    @property
    def locates(self) -> bool:
        """Whether the server may need an RoI, hence stage 1's attention map."""
        return self.name not in ("never", "tiles")

    def args(self) -> dict:
        return {"threshold": self.threshold, "rate": self.rate, "seed": self.seed}

    def retransmit(self, score: float, sample_key: str) -> bool:
        if self.name in ("always", "tiles"):
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
