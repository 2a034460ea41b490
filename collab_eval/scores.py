"""Uncertainty scores of the stage-1 answer: the gate's plug-ins.

A score is a function ``score(answer: StageOneAnswer) -> float``: one number for the whole
answer, HIGHER MEANING MORE UNCERTAIN (the gate retransmits when it exceeds τ). It is
registered under the entry-point group ``collab_eval.scores``; the name of the entry point is
what ``score=NAME`` in ``--model_args`` chooses. The built-in scores are registered the same
way, in this package's pyproject.toml. Every installed score is computed for every sample and
recorded in the record's ``scores``, so one always run gives each score's gated curve.

An answer with no generated token never reaches a score: every score of it is +inf
(maximally doubtful; recorded as null). A score that raises, or returns something that is not
a number (a string or a boolean is not one; nor NaN or -inf), fails that sample only, with a
message naming the score, when it is the run's chosen score; any other installed score's bad
value is left out of that sample's ``scores`` (missing), with one warning per run. docs/scores.md
has the formulas and how to add one.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, cached_property

import torch

from collab_eval import plugins
from collab_eval.uncertainty import aggregate

GROUP = "collab_eval.scores"
# The order scores are recorded in: today's three aggregations first (records of older runs
# hold exactly these), then the other built-ins, then plug-ins by name.
BUILTIN_ORDER = ("max", "mean", "first", "margin", "nll", "shannon")


@dataclass(frozen=True)
class StageOneAnswer:
    """What a score receives: the stage-1 answer, as the server generated it (greedily)."""
    logits: torch.Tensor  # (steps, vocab) raw logits of the generated tokens, steps >= 1
    tokens: tuple[int, ...] | None = None  # the generated token ids, one per step (None: not given)
    text: str = ""  # the answer as decoded (stop strings cut)

    @cached_property
    def log_probs(self) -> torch.Tensor:
        """(steps, vocab) log-softmax of the logits, in float32 (computed once for all scores)."""
        return torch.log_softmax(self.logits.float(), dim=-1)

    @cached_property
    def chosen(self) -> torch.Tensor:
        """(steps,) the generated token ids: ``tokens`` when given, else each step's argmax
        (what greedy decoding picks)."""
        if self.tokens is not None and len(self.tokens) == self.logits.shape[0]:
            return torch.tensor(self.tokens, dtype=torch.long, device=self.logits.device)
        return self.log_probs.argmax(dim=-1)

    @cached_property
    def min_entropy(self) -> list[float]:
        """Per token, nats: ``-log max_v p(v)``."""
        return (-self.log_probs.max(dim=-1).values).tolist()


Score = Callable[[StageOneAnswer], float]


# ----- the built-in scores (registered in pyproject.toml) ---------------------------------------
def max_min_entropy(answer: StageOneAnswer) -> float:
    """The largest token min-entropy (nats): the least confident token decides."""
    return aggregate(answer.min_entropy, "max")


def mean_min_entropy(answer: StageOneAnswer) -> float:
    """The mean token min-entropy (nats)."""
    return aggregate(answer.min_entropy, "mean")


def first_min_entropy(answer: StageOneAnswer) -> float:
    """The first token's min-entropy (nats)."""
    return aggregate(answer.min_entropy, "first")


def margin(answer: StageOneAnswer) -> float:
    """``max_t (1 - (p_t(1st) - p_t(2nd)))``, in [0, 1]: one minus the probability margin
    between a token's two most likely candidates, for the token where it is smallest (the
    least decided token decides, as for ``max``)."""
    p = answer.log_probs.exp()
    top = p.topk(min(2, p.shape[-1]), dim=-1).values
    second = top[:, 1] if top.shape[-1] > 1 else torch.zeros_like(top[:, 0])
    return float((1.0 - (top[:, 0] - second)).max())


def nll(answer: StageOneAnswer) -> float:
    """The answer's mean negative log-likelihood (nats per token): ``mean_t -log p_t(y_t)``
    of the generated tokens y_t. Under greedy decoding y_t is the argmax, so this equals
    ``mean`` (up to ties and logits processors); it differs for tokens not chosen greedily."""
    picked = answer.log_probs.gather(-1, answer.chosen.unsqueeze(-1)).squeeze(-1)
    return float(-picked.mean())


def shannon(answer: StageOneAnswer) -> float:
    """The largest token Shannon entropy ``-sum_v p(v) log p(v)`` (nats)."""
    log_p = answer.log_probs
    return float((-(log_p.exp() * log_p).nan_to_num().sum(dim=-1)).max())


# ----- finding and running the installed scores ----------------------------------------------
class ScoreError(ValueError):
    """A score that cannot be used (unknown, failed to load) or failed on an answer."""


@dataclass(frozen=True)
class Installed:
    """The scores found under the entry-point group, in recording order, and those that failed to load."""
    scores: dict[str, Score]
    broken: dict[str, str]  # name -> why it could not be loaded

    def names(self) -> list[str]:
        return list(self.scores)


@cache
def installed() -> Installed:
    """Every score registered under ``collab_eval.scores`` (read once per process)."""
    loaded = plugins.load_group(GROUP, accept, BUILTIN_ORDER)
    return Installed(loaded.found, loaded.broken)


def accept(ep, fn) -> Score:
    if not callable(fn):
        raise plugins.NotAPlugin(f"{ep.value} is a {type(fn).__name__}, not a function of the answer")
    return fn


def check_name(name) -> str:
    """``name`` if it is an installed, loadable score; otherwise a ScoreError listing what is installed."""
    scores = installed()
    if str(name) in scores.scores:
        return str(name)
    if str(name) in scores.broken:
        raise ScoreError(f"score={name}: installed but cannot be loaded ({scores.broken[str(name)]})")
    listing = ", ".join(scores.names()) or "none (reinstall collab-eval: its entry points are missing)"
    raise ScoreError(f"score must be one of the installed scores ({listing}; entry-point group {GROUP}), "
                     f"got {name!r}")


def evaluate(answer: StageOneAnswer, scores: dict[str, Score] | None = None,
             chosen: str | None = None) -> dict[str, float]:
    """Every score of the answer (all installed ones by default), +inf each for an empty answer.

    ``chosen``: the score the run gates on. When it is given, a score is isolated from the
    others: one that is not chosen and raises or returns no number is left out of the result
    (missing for this sample; ``missing_warning`` logs it once per process and score); the
    chosen one's failure raises ScoreError (the sample fails). Without ``chosen`` every
    failure raises."""
    scores = installed().scores if scores is None else scores
    if answer.logits.shape[0] == 0:
        return dict.fromkeys(scores, math.inf)
    values = {}
    for name, fn in scores.items():
        try:
            values[name] = value_of(name, fn, answer)
        except ScoreError as err:
            if chosen is None or name == chosen:
                raise
            missing_warning(name, str(err))
    return values


_warned: set[str] = set()


def missing_warning(name: str, why: str) -> None:
    """One warning per process (a run's rank) and score: an installed score not chosen gave no
    number for a sample, so it is missing from that sample's ``scores``."""
    if name in _warned:
        return
    _warned.add(name)
    from loguru import logger  # lmms-eval's logger: where a run's warnings go
    logger.warning(f"{why}; score {name} is not the gate's score, so it is recorded as missing for each such "
                   "sample (this warning is given once per run)")


def value_of(name: str, fn: Score, answer: StageOneAnswer) -> float:
    """The score's value as a float. A non-number is refused, not coerced: a string, a boolean,
    None, a tensor of more than one value; so are NaN and -inf (+inf: maximally uncertain)."""
    try:
        value = fn(answer)
    except Exception as err:  # noqa: BLE001  -- becomes this sample's failure, naming the score
        raise ScoreError(f"score {name} failed: {type(err).__name__}: {err}") from err
    number = as_number(value)
    if number is None:
        raise ScoreError(f"score {name} returned {type(value).__name__} {value!r:.60}, expected a number")
    if math.isnan(number) or number == -math.inf:
        raise ScoreError(f"score {name} returned {number}, expected a number (+inf: maximally uncertain)")
    return number


def as_number(value) -> float | None:
    """``value`` as a float if it is a real number (Python, numpy, or a one-value tensor of a
    numeric dtype); None for anything else (strings, booleans, None, arrays, complex)."""
    import numbers

    import numpy as np
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.dtype == torch.bool or value.is_complex():
            return None
        value = value.item()
    elif isinstance(value, np.ndarray):
        if value.size != 1 or value.dtype.kind not in "iuf":
            return None
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        return None
    return float(value)
