"""What a report must say is missing: runs whose records are incomplete (fewer samples than
the run planned, a records file cut off, a run that never finished), and failed samples per
system and task with how they were scored. Shown under report.md's headline."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from collab_eval.analysis.runs import Run, expected_counts
from collab_eval.run_session import RunStarted, journal_path, read_journal

FAILED_SCORING = ("scored as wrong (lmms-eval scored their answer \"\"; the curves score both stages 0), "
                  "costed at what they sent and computed before failing")


def incomplete(run: Run) -> list[str]:
    """Why ``run``'s records are not the whole run, one line each (empty when they are)."""
    lines = []
    counts = Counter(r.task for r in run.records)
    planned = expected_counts(run.results)
    for task in sorted(set(planned) | set(counts)):
        if task in planned and counts.get(task, 0) < planned[task]:
            lines.append(f"{task}: {counts.get(task, 0)} of {planned[task]} planned samples present")
    lines += [f"records file cut: {note}" for note in run.skipped]
    if not planned and run.run_id:
        unfinished = ", ".join(map(str, unfinished_ranks(run)))
        if unfinished:
            lines.append(f"the run did not finish (its journal has no finish of rank(s) {unfinished}); "
                         f"samples present: {', '.join(f'{t} {n}' for t, n in sorted(counts.items()))}")
    return lines


def unfinished_ranks(run: Run) -> list[int]:
    """The ranks of the run's last session that never finished, from its journal beside its
    records (``<run_id>.run.ndjson``); [] without a journal."""
    for directory in dict.fromkeys(Path(p).parent for p in run.record_files):
        path = journal_path(directory, run.run_id)
        if not path.is_file():
            continue
        events = read_journal(path)
        starts = [e for e in events if isinstance(e, RunStarted)]
        if not starts:
            return []
        last = starts[-1]
        done = {e.rank for e in events if not isinstance(e, RunStarted) and e.session == last.session}
        return sorted(set(range(last.world_size)) - done)
    return []


def notes(summary, labels: dict[str, str]) -> list[str]:
    """The headline's notes: each incomplete run, and failed samples per system and task."""
    out = [f"Incomplete run {row.name} ({labels.get(row.system, row.system)}): {line}."
           for row in summary.runs for line in row.incomplete]
    failed = []
    for name, system in sorted(summary.systems.items(), key=lambda item: labels.get(item[0], item[0])):
        for task, entry in sorted(system.tasks.items()):
            counted = ([(entry.from_always.errors, entry.from_always.n, "always")] if entry.from_always else [])
            counted += [(p.errors, p.n, p.label or p.policy) for p in entry.points]
            for errors, n, run in counted:
                if errors:
                    failed.append(f"{task}, {labels.get(name, name)} ({run}): {errors} of {n} failed")
    if failed:
        out.append(f"Failed samples: {'; '.join(failed)}. They are {FAILED_SCORING} (the records' error and "
                   "failed_step say why and where).")
    return out
