"""A run's settings, declared once: every shared model arg of the collab adapters.

Each field of ``RunSettings`` is one model arg: its name, default, check (collab_eval.model_args,
so every refusal names the arg, its value and what is allowed), its line in docs/model-args.md
and its role. Everything that lists the args is derived from here: the adapter's parsing and
its unknown-arg error, the run plan's settings (what a resumed run must match), the record's
``settings``, the defaults report and check assume (collab_eval.systems) and the docs table
(``python -m collab_eval.run_settings docs/model-args.md`` rewrites it; a test compares).

A family's own args (``max_pixels``, ``qformer_layer``, ...) are not declared here: they are the
keyword arguments of its server's ``family_args``, checked there, and tell systems apart. Not
given, they are None (the family's own choice), which is what report and check assume for a
record that does not hold one.
"""
from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from collab_eval import model_args
from collab_eval.model_args import ModelArgError
from collab_eval.policy import POLICIES

if TYPE_CHECKING:
    from collab_eval.edge import Codec

Value = str | int | float | bool | None

# The roles, in the docs' order. Only SYSTEM args (and a threshold run's score) are in a record's
# ``settings``; RUN and SYSTEM args together are the run's settings, which resume matches.
PLACEMENT = "placement"  # which checkpoint, which run, where the records go and what they keep
RUN = "run"  # the gate: the record's policy, policy_args and score_name, not the system
SYSTEM = "system"  # changes answers or costs: tells systems apart in report and check
EXECUTION = "execution"  # how it runs: the same answers and costs, recorded nowhere
ROLES = {
    PLACEMENT: "Checkpoint, run and records",
    RUN: "The gate (the run's own: a record's `policy`, `policy_args`, `score_name`)",
    SYSTEM: "What tells systems apart (a record's `settings`: report and check compare systems by them)",
    EXECUTION: "Execution only (the same answers and costs for any value; recorded nowhere)",
}
DTYPES = ("auto", "float32", "float16", "bfloat16")


def arg(default: Any, role: str, check: Callable[[str, Any], Any], help: str, *, shown: str = ""):
    """One model arg: ``check(name, value)`` returns the checked value or raises ModelArgError;
    ``shown``: the docs' default where the value alone would not say it."""
    return field(default=default, metadata={"role": role, "check": check, "help": help, "shown": shown})


# ----- checks that need more than collab_eval.model_args (imported when used: torch, PIL) -------
def _codec(name, value):
    from collab_eval.edge import Codec
    return Codec.parse(str(value))


def _score(name, value):
    from collab_eval import scores
    return scores.check_name(value)


def _locator(name, value):
    from collab_eval import locators
    locators.load(str(value))  # installed and loadable, before anything loads
    return str(value)


def _rate(name, value):
    rate = model_args.number(name, value, what="a number in [0, 1]")
    if not 0.0 <= rate <= 1.0:
        raise ModelArgError(f"{name} must be in [0, 1], got {value!r}")
    return rate


def _batch_size(name, value):
    return model_args.integer(name, 1 if str(value).strip() == "auto" else value, minimum=1)


def _edge_workers(name, value):
    # None: the default, which depends on ``threads`` (collab_eval.edge_pool.default_workers).
    return None if value is None else model_args.integer(name, value, minimum=0)


def _pretrained(name, value):
    from collab_eval.checkpoints import resolve
    return model_args.local_path_exists(name, resolve(str(value)))


def _as_given(name, value):
    return value


@dataclass(frozen=True)
class RunSettings:
    """The checked model args of one run. Fields are checked in this order, the ones that touch
    the file system (pretrained's short names, records_dir) last, after the args that exclude
    each other."""
    # --- the gate ---
    policy: str = arg("threshold", RUN, partial(model_args.one_of, allowed=POLICIES),
                      "`threshold` (retransmit when score > τ), `random` (at rate p), `always`, `never`, `tiles` "
                      "(global + 2×2 tiles, no gate; see [families.md](families.md#policytiles))")
    threshold: float = arg(1.0, RUN, partial(model_args.number, infinite_ok=True,
                                             what="a number of nats (inf: never retransmit, -inf: always)"),
                           "τ in nats, for `threshold`; `inf` never retransmits, `-inf` always (records store them as "
                           "`\"inf\"` / `\"-inf\"`); `nan` is refused")
    rate: float = arg(0.5, RUN, _rate, "retransmission probability in [0, 1], for `random`")
    seed: int = arg(0, RUN, model_args.integer,
                    "seed of the `random` policy; a sample's draw depends only on (task, doc id, seed), so it is the "
                    "same on any number of processes")
    # --- what tells systems apart; score sits among them since a threshold run's record holds it
    # there (the records' key order must not change) ---
    codec: Codec = arg("png", SYSTEM, _codec, "`png`, `jpeg:Q` or `webp:Q` with Q in 1..100, for every image sent")
    score: str = arg("max", RUN, _score,
                     "the score a `threshold` run gates on: any installed score, built-in `max`, `mean`, `first` "
                     "(min-entropy over tokens), `margin`, `nll`, `shannon`, or a plug-in ([scores.md](scores.md)); "
                     "every installed score is recorded whatever this is")
    layer: int | None = arg(None, SYSTEM, partial(model_args.optional_integer, minimum=0),
                            "LLM layer whose attention locates the RoI",
                            shown="ViCrop's layer 14 of 32, scaled to the checkpoint's depth (per family: "
                                  "[families.md](families.md))")
    dtype: str = arg("auto", SYSTEM, partial(model_args.one_of, allowed=DTYPES),
                     "`auto` (the checkpoint's dtype on GPU, float32 on CPU), `float32`, `float16`, `bfloat16`")
    max_new_tokens: int = arg(32, SYSTEM, partial(model_args.integer, minimum=1),
                              "cap on generated tokens (a task's smaller `max_new_tokens` wins)")
    reuse_prefix: bool = arg(True, SYSTEM, model_args.boolean,
                             "stage 2 and the generic-prompt pass continue from stage 1's cached keys and values of "
                             "the prompt's start through the global image; `false` recomputes them (full-recompute "
                             "FLOP accounting, [costs.md](costs.md))")
    locator: str = arg("rel_att", SYSTEM, _locator,
                       "how the RoI is found: `rel_att` (ViCrop's relative attention), `grad_att`, `pure_grad` "
                       "(ViCrop's gradient methods), `center` (the base window at the centre), or any installed "
                       "plug-in's name; an unknown name is refused before the model loads, listing the installed "
                       "ones ([locators.md](locators.md))")
    highres: bool = arg(False, SYSTEM, model_args.boolean,
                        "`true`: a map locator maps tiles (under 1024 px) of an original over 1024 px, sent by the "
                        "edge (`bytes_tiles`), stitched ([locators.md](locators.md)); refused with `locator=center`")
    # --- execution only ---
    device: str | None = arg(None, EXECUTION, _as_given, "torch device",
                             shown="`cuda:<local rank>` if CUDA is available, else `cpu`")
    device_map: str | None = arg(None, EXECUTION, _as_given, "e.g. `auto` to split one large model over GPUs")
    threads: int = arg(1, EXECUTION, partial(model_args.integer, minimum=0),
                       "torch CPU threads on a CPU device (`0`: torch's own default); see [CPU threads](#cpu-threads)")
    batch_size: int = arg(1, EXECUTION, _batch_size,
                          "samples per batch (lmms-eval's `--batch_size`; `auto` means 1); see [Batches](#batches)")
    max_batch_size: Any = arg(None, EXECUTION, _as_given,
                              "accepted because lmms-eval passes its `--max_batch_size` to every model; not used")
    edge_workers: int = arg(None, EXECUTION, _edge_workers,
                            "threads for the edge's work (reading and decoding documents, framing, encoding, the "
                            "original's size for `bytes_original`), run beside the server's passes; `0`: in line on "
                            "the model's thread, before and between its passes. The records are the same for any "
                            "value; see [Edge threads](#edge-threads)",
                            shown="the CPUs this process may use less `threads`, at least 1, at most 4")
    # --- checkpoint, run and records ---
    pretrained: str = arg(None, PLACEMENT, _pretrained,
                          "hub id, local path, or a short name: `smalldetail-llava`, `smalldetail-qwen2-vl`, ... "
                          "(trained, shipped with the package: `collab-eval families --trained`) or a random-weight "
                          "checkpoint the package builds (`tiny-llava`, `tiny-qwen2-vl`, `tiny-instructblip`, ...; "
                          "`geometry-llava`: LLaVA-1.5's 576-token image geometry at 145 M parameters, for timing)",
                          shown="the family's reference checkpoint (`llava-hf/llava-1.5-7b-hf` for `collab_llava`)")
    record_map: bool = arg(False, PLACEMENT, model_args.boolean,
                           "`true`: each record keeps the locator's map (`roi_map`, at the map's grid resolution, "
                           "and `roi_map_region`) for report.html's sample browser ([records.md](records.md)); about "
                           "64 numbers per sample for an 8×8 grid, 576 for LLaVA-1.5's 24×24; answers and costs "
                           "unchanged")
    resume: bool = arg(False, PLACEMENT, model_args.boolean,
                       "`true`: continue the newest run in `records_dir` with the same settings "
                       "([interrupted-runs.md](interrupted-runs.md))")
    run_id: str | None = arg(None, PLACEMENT, model_args.run_id,
                             "name this run (letters, digits, `.`, `_`, `-`); lands in results.json's `model_args`. "
                             "A `run_id` already in `records_dir` needs `resume=true`",
                             shown="a new one: `<adapter>-<UTC yyyymmddThhmmss.ffffff>Z-<8 hex>`")
    records_dir: Path = arg("collab_records", PLACEMENT, model_args.writable_directory,
                            "where the per-sample records go; created if needed, and must be writable (checked "
                            "before the model loads)")
    # The family's own args, as its server's family_args checked them (not a model arg itself).
    family: dict[str, Value] = field(default_factory=dict)

    @classmethod
    def parse(cls, given: dict[str, Any], family_args: Callable[..., dict],
              pretrained: str | None = None) -> RunSettings:
        """The settings from lmms-eval's keyword args, each checked before anything loads.
        ``family_args``: the family server's checker of its own args; ``pretrained``: the
        family's default checkpoint. Raises ModelArgError naming the arg, its value and what is allowed."""
        given = dict(given)
        if given.get("pretrained") is None:
            given["pretrained"] = pretrained
        if given["pretrained"] is None:
            raise ModelArgError("pretrained is required (a checkpoint path, hub id or short name)")
        own = family_arg_defaults(family_args)
        unknown = sorted(set(given) - {a.name for a in ARGS} - set(own))
        if unknown:
            raise ModelArgError(f"unknown model arg(s) {unknown}; allowed: {allowed_args(family_args)}")
        family = family_args(**{k: v for k, v in given.items() if k in own})
        checked = {a.name: a.check(a.name, given.get(a.name, a.default)) for a in ARGS if a.role != PLACEMENT}
        # Before the placement args touch the file system (records_dir is created there).
        _check_together(checked["locator"], checked["highres"])
        checked |= {a.name: a.check(a.name, given.get(a.name, a.default)) for a in ARGS if a.role == PLACEMENT}
        return cls(**checked, family=family)

    def __post_init__(self):
        _check_together(self.locator, self.highres)

    def recorded(self) -> dict[str, Value]:
        """The record's ``settings``: every arg that changes answers or costs (collab_eval.systems
        tells systems apart by them), and a threshold run's score (only its answers depend on it)."""
        return {**{a.name: as_value(getattr(self, a.name)) for a in ARGS
                   if a.role == SYSTEM or (a.name == "score" and self.policy == "threshold")}, **self.family}

    def of_run(self, adapter: str) -> dict[str, Value]:
        """The run plan's settings (collab_eval.run_session): what a resumed run must match."""
        from collab_eval.checkpoints import checkpoint_identity
        return {"adapter": adapter, "model": checkpoint_identity(self.pretrained),
                **{a.name: as_value(getattr(self, a.name)) for a in ARGS if a.role in (RUN, SYSTEM)}, **self.family}


def _check_together(locator: str, highres: bool) -> None:
    """The args that exclude each other."""
    if highres:
        from collab_eval import locators
        if locators.load(locator).kind != "map":
            raise ModelArgError(f"highres=true tiles a map locator's maps; locator={locator} returns a box")


@dataclass(frozen=True)
class Arg:
    """One declared model arg (a field of RunSettings)."""
    name: str
    default: Any
    role: str
    check: Callable[[str, Any], Any]
    help: str
    shown: str


ARGS: tuple[Arg, ...] = tuple(Arg(f.name, f.default, **f.metadata) for f in fields(RunSettings) if f.metadata)
SYSTEM_DEFAULTS: dict[str, Value] = {a.name: a.default for a in ARGS if a.role == SYSTEM}
RUN_ARGS: tuple[str, ...] = tuple(a.name for a in ARGS if a.role == RUN)


def as_value(value) -> Value:
    """A checked value as records and run plans hold it (a Codec as ``jpeg:90``)."""
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


def family_arg_defaults(family_args: Callable[..., dict]) -> dict[str, Any]:
    """A family's own args (the keyword arguments of its server's ``family_args``) and their defaults."""
    return {name: p.default for name, p in inspect.signature(family_args).parameters.items()}


def allowed_args(family_args: Callable[..., dict]) -> list[str]:
    return sorted({*(a.name for a in ARGS), *family_arg_defaults(family_args)})


# ----- docs/model-args.md ------------------------------------------------------------------------
BEGIN, END = "<!-- shared args: generated by python -m collab_eval.run_settings -->", "<!-- end of shared args -->"


def default_text(arg_: Arg) -> str:
    if arg_.shown:
        return arg_.shown
    value = arg_.default
    return "none" if value is None else f"`{str(value).lower() if isinstance(value, bool) else value}`"


def docs_table() -> str:
    """The shared args' tables of docs/model-args.md, one per role."""
    out = []
    for role, title in ROLES.items():
        out += [f"### {title}", "", "| arg | default | meaning |", "|---|---|---|"]
        out += [f"| `{a.name}` | {default_text(a)} | {a.help} |" for a in ARGS if a.role == role]
        out.append("")
    return "\n".join(out).rstrip("\n")


def with_docs_table(text: str) -> str:
    """``text`` (docs/model-args.md) with the part between the markers replaced by docs_table()."""
    head, begin, rest = text.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not (begin and end):
        raise ValueError(f"the docs page lacks the markers {BEGIN!r} ... {END!r}")
    return f"{head}{BEGIN}\n{docs_table()}\n{END}{tail}"


if __name__ == "__main__":  # python -m collab_eval.run_settings docs/model-args.md
    page = Path(sys.argv[1])
    page.write_text(with_docs_table(page.read_text()))
