"""The regression gate: does a run still buy as much accuracy per byte (and per FLOP) as
the baseline summary says?

For every system and task of the baseline that has curves, over the baseline's cost range
[never, always] (bytes, then FLOPs):

- the mean accuracy over that range of budgets (area under the best-accuracy-within-budget
  curve, divided by the width), may drop by at most ``auc``;
- the best accuracy within each of a few budgets (fractions of the range, or absolute byte
  budgets) may drop by at most ``budget``;
- the never and always ends may not cost more than ``cost`` (relative) more.

Accuracies are fractions (0.01 = one point). A system or task missing from the run fails.
"""
from __future__ import annotations

from dataclasses import dataclass

from collab_eval.analysis import curves
from collab_eval.analysis.summary import points_of

FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)
UNITS = {"bytes": ("bytes", 1.0), "flops": ("FLOPs", 1.0)}


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


def compare(current: dict, baseline: dict, tol: Tolerances = Tolerances(), fractions=FRACTIONS,
            byte_budgets=()) -> list[Row]:
    rows = []
    for system, base_system in sorted(baseline["systems"].items()):
        for task, base in sorted(base_system["tasks"].items()):
            if "curves" not in base:
                continue
            cur = current["systems"].get(system, {}).get("tasks", {}).get(task)
            if not cur or "curves" not in cur:
                rows.append(Row(system, task, "curves (needs an always run)", None, None, "present", "REGRESSION"))
                continue
            rows += compare_task(system, task, cur, base, tol, fractions, byte_budgets)
    return rows


def compare_task(system, task, cur, base, tol, fractions, byte_budgets) -> list[Row]:
    rows = []
    cur_points, base_points = points_of(cur["curves"]["gated"]), points_of(base["curves"]["gated"])

    def accuracy_row(measure, b, c, allowed):
        status = "REGRESSION" if c < b - allowed - 1e-12 else "improved" if c > b + allowed + 1e-12 else "ok"
        return Row(system, task, measure, b, c, f"-{allowed:g}", status)

    for cost, (unit, scale) in UNITS.items():
        lo, hi = base["never"][cost], base["always"][cost]
        span = f"{lo / scale:,.4g}–{hi / scale:,.4g} {unit}"
        rows.append(accuracy_row(f"mean accuracy over {span}", curves.mean_accuracy(base_points, lo, hi, cost),
                                 curves.mean_accuracy(cur_points, lo, hi, cost), tol.auc))
        budgets = [lo + f * (hi - lo) for f in fractions] + (list(byte_budgets) if cost == "bytes" else [])
        for budget in dict.fromkeys(budgets):
            rows.append(accuracy_row(f"accuracy within {budget / scale:,.4g} {unit}",
                                     curves.best_within(base_points, budget, cost),
                                     curves.best_within(cur_points, budget, cost), tol.budget))
        for end in ("never", "always"):
            b, c = base[end][cost], cur[end][cost]
            status = "REGRESSION" if c > b * (1 + tol.cost) + 1e-9 else "improved" if c < b * (1 - tol.cost) else "ok"
            rows.append(Row(system, task, f"{end}: mean {unit}", b / scale, c / scale, f"+{100 * tol.cost:g}%", status))
    return rows


def failed(rows: list[Row]) -> bool:
    return any(r.status == "REGRESSION" for r in rows)


LEGEND = ("Entropy-gate curves of the run against the baseline, per system and task. Accuracy is a fraction "
          "(0.01 = one point). 'accuracy within B': the best threshold whose mean cost per sample is at most B "
          "(0 when none is that cheap). 'mean accuracy over A–B': that accuracy averaged over every budget from A "
          "(the baseline's never) to B (its always). 'never/always: mean cost': the two ends' cost per sample.")


def table(rows: list[Row]) -> str:
    headers = ("status", "system", "task", "measure", "baseline", "current", "change", "allowed")
    body = [(r.status, r.system, r.task, r.measure, fmt(r.baseline), fmt(r.current), r.change, r.allowed) for r in rows]
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *body)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line("-" * w for w in widths), *map(line, body)])


def fmt(x) -> str:
    return "–" if x is None else f"{x:,.6g}"
