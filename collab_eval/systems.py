"""A system: a checkpoint and every setting that changes its answers or costs.

A record's ``settings`` holds those model args as the run was started (collab_eval.run_settings,
``RunSettings.recorded``). Report and check compare systems, so two always runs of one
checkpoint that differ in ``dtype`` or ``layer`` are two systems, named by the settings that
differ. A setting a record does not hold (records written before it existed, or before
``settings`` existed at all) has its declared default; a family's own arg (``max_pixels``,
``qformer_layer``, ...) not held is None, the family's own choice.

``score`` is in a threshold run's settings but not in its system: one always run derives the
gate of every score, so a threshold run of any score is a point on its system's figure
(its label names the score).
"""
from __future__ import annotations

from collab_eval.run_settings import RUN_ARGS, SYSTEM_DEFAULTS, Value

# Every shared setting a system is told apart by, with the value a run has when the arg is not
# given (None: the family's own choice, e.g. a middle layer), as collab_eval.run_settings declares them.
DEFAULTS: dict[str, Value] = SYSTEM_DEFAULTS


def system_settings(settings: dict[str, Value], codec: str | None = None) -> dict[str, Value]:
    """A run's full system settings: defaults, then the record's ``codec`` field (records written
    before ``settings`` existed), then the recorded settings; run-level ones left out, and a
    family's own arg at None (its default: the same system as a record that does not hold it)."""
    full = {**DEFAULTS, **({"codec": codec} if codec else {}), **settings}
    return {k: v for k, v in full.items() if k not in RUN_ARGS and (k in DEFAULTS or v is not None)}


def shown(value: Value) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower() if value is not None else "default"
    return str(value)


def non_default(settings: dict[str, Value]) -> list[str]:
    """``k=v`` for every setting whose value is not its default, in DEFAULTS' order, codec excluded."""
    full = system_settings(settings)
    keys = [*DEFAULTS, *sorted(set(full) - set(DEFAULTS))]
    return [f"{k}={shown(full[k])}" for k in keys if k != "codec" and full[k] != DEFAULTS.get(k, object())]


def system_key(checkpoint: str, settings: dict[str, Value]) -> str:
    """The system's name in summary.json: ``checkpoint:codec`` (as before settings existed),
    then each setting not at its default, e.g. ``smalldetail-llava:png dtype=bfloat16``."""
    full = system_settings(settings)
    return " ".join([f"{checkpoint}:{full['codec']}", *non_default(full)])


def differing(systems: dict[str, tuple[str, dict[str, Value]]]) -> dict[str, str]:
    """Each system's label among these: its checkpoint, then only the settings whose value is not
    the same in all of them (``smalldetail-llava dtype=bfloat16``). ``systems``: name ->
    (checkpoint, settings). The same system twice is numbered: ``tiny-llava``, ``tiny-llava #2``."""
    fulls = {name: system_settings(s) for name, (_, s) in systems.items()}
    keys = [*DEFAULTS, *sorted({k for s in fulls.values() for k in s} - set(DEFAULTS))]
    varying = [k for k in keys if len({repr(s.get(k, DEFAULTS.get(k))) for s in fulls.values()}) > 1]
    labels = {name: " ".join([checkpoint, *(f"{k}={shown(fulls[name].get(k, DEFAULTS.get(k)))}" for k in varying)])
              for name, (checkpoint, _) in systems.items()}
    # The same system twice (repeated always runs of one configuration): numbered, first plain.
    counts: dict[str, int] = {}
    out = {}
    for name in sorted(labels, key=lambda n: (labels[n], len(n), n)):
        counts[labels[name]] = counts.get(labels[name], 0) + 1
        out[name] = labels[name] + (f" #{counts[labels[name]]}" if counts[labels[name]] > 1 else "")
    return out


def same_system(a: dict[str, Value], b: dict[str, Value]) -> bool:
    return system_settings(a) == system_settings(b)


def what_differs(a: dict[str, Value], b: dict[str, Value]) -> list[str]:
    """``k: A vs B`` for each system setting in which ``a`` and ``b`` differ."""
    fa, fb = system_settings(a), system_settings(b)
    return [f"{k}: {shown(fa.get(k))} vs {shown(fb.get(k))}" for k in dict.fromkeys([*fa, *fb])
            if fa.get(k) != fb.get(k)]
