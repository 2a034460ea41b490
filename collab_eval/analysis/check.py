"""The regression gate: does a run still buy as much accuracy per byte (and per FLOP) as
the baseline summary says?

For every system and task of the baseline that has curves, over the baseline's cost range
[never, always] (bytes, then FLOPs):

- the mean accuracy over that range of budgets (area under the best-accuracy-within-budget
  curve, divided by the width), may drop by at most ``auc``;
- the best accuracy within each of a few budgets (fractions of the range, or absolute byte
  budgets) may drop by at most ``budget``;
- the never and always ends may not cost more than ``cost`` (relative) more.

Accuracies are fractions (0.01 = one point). Before comparing anything, the run must be
comparable with the baseline: every such system and task present in the run with an always run
and the same number of samples. A run's system stands for the baseline system with the same
checkpoint and the same settings (collab_eval.systems; a baseline written before systems had
settings holds the defaults and its codec), whatever their names. Otherwise ``compare`` lists
why (which side lacks what), and nothing is compared. A system of the run can stand for another
baseline system (``systems``), and a run on fewer samples or fewer tasks can be compared on what it has
(``allow_subset``) when the user asks for it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from collab_eval.analysis import curves
from collab_eval.analysis.summary import FromAlways, Summary, SystemSummary
from collab_eval.systems import what_differs

FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)
UNITS = {"bytes": "bytes", "flops": "FLOPs"}


@dataclass(frozen=True)
class Tolerances:
    auc: float = 0.01  # mean accuracy over the cost range: at most 1 point lower
    budget: float = 0.02  # accuracy within one budget: at most 2 points lower
    cost: float = 0.02  # never/always mean cost: at most 2% higher


@dataclass
class Row:
    system: str
    task: str
    measure: str
    baseline: float | None
    current: float | None
    allowed: str
    status: str  # ok, REGRESSION, improved

    @property
    def change(self) -> str:
        if self.baseline is None or self.current is None:
            return "–"
        return f"{self.current - self.baseline:+.4g}"


@dataclass
class Comparison:
    rows: list[Row] = field(default_factory=list)
    not_comparable: list[str] = field(default_factory=list)  # why the run cannot be compared (then no rows)
    notes: list[str] = field(default_factory=list)  # what was not compared, or on fewer samples, and why

    @property
    def regressions(self) -> int:
        return sum(r.status == "REGRESSION" for r in self.rows)


def compare(current: Summary, baseline: Summary, tol: Tolerances = Tolerances(), fractions=FRACTIONS,
            byte_budgets=(), systems: dict[str, str] | None = None, allow_subset: bool = False) -> Comparison:
    """``systems`` maps a run's system to the baseline system it stands for (RUN=BASELINE)."""
    pairs = pair_systems(current, baseline, systems or {})
    out = Comparison()
    pending, paired = [], set()
    for base_name, base_system in sorted(baseline.systems.items()):
        with_curves = {t: e.from_always for t, e in sorted(base_system.tasks.items()) if e.from_always}
        if not with_curves:
            continue
        run_name = pairs.get(base_name) or matching_system(current, base_name, base_system)
        label = run_name if run_name == base_name else f"{run_name} vs {base_name}"
        run_system = current.systems.get(run_name) if run_name else None
        if run_system is None:
            reason = (f"system {base_name}: in the baseline, not in the run"
                      f"{run_systems_hint(current, base_name)}{settings_hint(current, base_system)}")
            (out.notes if allow_subset else out.not_comparable).append(reason)
            continue
        for task, base in with_curves.items():
            paired.add((run_name, task))
            entry = run_system.tasks.get(task)
            where = f"{label} / {task}"
            if entry is None:
                reason = f"{where}: in the baseline ({base.n} samples), not in the run"
                (out.notes if allow_subset else out.not_comparable).append(reason)
            elif entry.from_always is None:
                out.not_comparable.append(f"{where}: the run has no always run of it (the curves need one; it has "
                                          f"{', '.join(p.label for p in entry.points)})")
            elif entry.from_always.n != base.n:
                counts = f"{where}: {entry.from_always.n} samples in the run, {base.n} in the baseline"
                if allow_subset and entry.from_always.n < base.n:
                    out.notes.append(counts + " (compared anyway: --allow-subset)")
                    pending.append((label, task, entry.from_always, base))
                else:
                    out.not_comparable.append(counts)
            else:
                pending.append((label, task, entry.from_always, base))
    out.notes += [f"{name} / {task}: in the run, not in the baseline (not compared)"
                  for name, system in sorted(current.systems.items()) for task, entry in sorted(system.tasks.items())
                  if entry.from_always and (name, task) not in paired]
    if not out.not_comparable:
        for label, task, cur, base in pending:
            out.rows += compare_task(label, task, cur, base, tol, fractions, byte_budgets)
    return out


def pair_systems(current: Summary, baseline: Summary, systems: dict[str, str]) -> dict[str, str]:
    """Baseline system -> the run's system compared with it, from RUN=BASELINE pairs."""
    pairs = {}
    for run_name, base_name in systems.items():
        if run_name not in current.systems:
            raise ValueError(f"--system {run_name}={base_name}: the run has no system {run_name} "
                             f"(it has: {', '.join(sorted(current.systems)) or 'none'})")
        if base_name not in baseline.systems:
            raise ValueError(f"--system {run_name}={base_name}: the baseline has no system {base_name} "
                             f"(it has: {', '.join(sorted(baseline.systems)) or 'none'})")
        if base_name in pairs:
            raise ValueError(f"--system: baseline system {base_name} is given twice")
        pairs[base_name] = run_name
    return pairs


def matching_system(current: Summary, base_name: str, base: SystemSummary) -> str | None:
    """The run's system that is the baseline's: the same checkpoint with the same settings (the
    one of the same name first, when a system has repeated always runs), or None."""
    same = [name for name, s in sorted(current.systems.items())
            if s.checkpoint == base.checkpoint and s.full_settings() == base.full_settings()]
    return base_name if base_name in same else (same[0] if same else None)


def settings_hint(current: Summary, base: SystemSummary) -> str:
    """What differs from the baseline system's settings in the run's systems of the same checkpoint."""
    near = [(name, what_differs(s.full_settings(), base.full_settings())) for name, s in sorted(current.systems.items())
            if s.checkpoint == base.checkpoint]
    return "".join(f"; the run's {name} differs in {', '.join(diff)} (run vs baseline)" for name, diff in near if diff)


def run_systems_hint(current: Summary, base_name: str) -> str:
    others = sorted(name for name, s in current.systems.items() if any(e.from_always for e in s.tasks.values()))
    if not others:
        return " (the run has no system with an always run)"
    return (f" (the run has: {', '.join(others)}; to compare one with it anyway: "
            f"--system {others[0]}={base_name})")


def compare_task(system: str, task: str, cur: FromAlways, base: FromAlways, tol: Tolerances, fractions,
                 byte_budgets) -> list[Row]:
    rows = []
    cur_points, base_points = cur.curves.gated, base.curves.gated

    def accuracy_row(measure, b, c, allowed):
        status = "REGRESSION" if c < b - allowed - 1e-12 else "improved" if c > b + allowed + 1e-12 else "ok"
        return Row(system, task, measure, b, c, f"-{allowed:g}", status)

    for cost, unit in UNITS.items():
        lo, hi = getattr(base.never, cost), getattr(base.always, cost)
        span = f"{lo:,.4g}–{hi:,.4g} {unit}"
        rows.append(accuracy_row(f"mean accuracy over {span}", curves.mean_accuracy(base_points, lo, hi, cost),
                                 curves.mean_accuracy(cur_points, lo, hi, cost), tol.auc))
        budgets = [lo + f * (hi - lo) for f in fractions] + (list(byte_budgets) if cost == "bytes" else [])
        for budget in dict.fromkeys(budgets):
            rows.append(accuracy_row(f"accuracy within {budget:,.4g} {unit}",
                                     curves.best_within(base_points, budget, cost),
                                     curves.best_within(cur_points, budget, cost), tol.budget))
        for end in ("never", "always"):
            b, c = getattr(getattr(base, end), cost), getattr(getattr(cur, end), cost)
            status = "REGRESSION" if c > b * (1 + tol.cost) + 1e-9 else "improved" if c < b * (1 - tol.cost) else "ok"
            rows.append(Row(system, task, f"{end}: mean {unit}", b, c, f"+{100 * tol.cost:g}%", status))
    return rows


LEGEND = ("Entropy-gate curves of the run against the baseline, per system and task. Accuracy is a fraction "
          "(0.01 = one point). 'accuracy within B': the best threshold whose mean cost per sample is at most B "
          "(0 when none is that cheap). 'mean accuracy over A–B': that accuracy averaged over every budget from A "
          "(the baseline's never) to B (its always). 'never/always: mean cost': the two ends' cost per sample.")


def regression_table(rows: list[Row]) -> str:
    headers = ("status", "system", "task", "measure", "baseline", "current", "change", "allowed")
    body = [(r.status, r.system, r.task, r.measure, fmt(r.baseline), fmt(r.current), r.change, r.allowed) for r in rows]
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *body)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line("-" * w for w in widths), *map(line, body)])


def fmt(x) -> str:
    return "–" if x is None else f"{x:,.6g}"
