"""Whether two runs recorded the same samples the same way.

    python -m collab_eval.lab.same_records RECORDS_DIR_A RECORDS_DIR_B [--tolerance 1e-4] [--ignore FIELD[.KEY]]

Two records of a sample (task, doc id) are the same when every field is equal but those that
name the run or measure time (``run_id``, ``seconds``, ``model`` — a path —, ``rank``), and
floats (scores, entropies) agree within the tolerance. Prints one line per differing sample
(its first differing field) and a summary; exits 1 when any sample differs or the runs hold
different samples. ``--ignore`` (repeatable) sets aside a field, or one key of a dict field
(``flops.locate``), in both runs: fields a newer version added. Used to show that a refactor,
a batch size or a data-parallel launch changes nothing a run records (docs/measurements.md).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from collab_eval.records import read_records

IGNORED = frozenset({"run_id", "seconds", "model", "rank"})


def first_difference(a, b, tolerance: float, path: str = "") -> str | None:
    """Where ``a`` and ``b`` (JSON values) first differ, or None."""
    if isinstance(a, float) or isinstance(b, float):
        same = a is not None and b is not None and abs(a - b) <= tolerance
        return None if same or a == b else f"{path}: {a!r} != {b!r}"
    if isinstance(a, dict) and isinstance(b, dict):
        if list(a) != list(b):
            return f"{path}: keys {list(a)} != {list(b)}"
        return next((d for k in a if (d := first_difference(a[k], b[k], tolerance, f"{path}.{k}"))), None)
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} items != {len(b)}"
        return next((d for i, (x, y) in enumerate(zip(a, b))
                     if (d := first_difference(x, y, tolerance, f"{path}[{i}]"))), None)
    return None if a == b else f"{path}: {a!r} != {b!r}"


def kept(record: dict, ignore: list[str]) -> dict:
    """``record`` without the fields that name the run or measure time, nor those in ``ignore``."""
    out = {k: v for k, v in record.items() if k not in IGNORED and k not in ignore}
    for field, _, key in (name.partition(".") for name in ignore if "." in name):
        if isinstance(out.get(field), dict):
            out[field] = {k: v for k, v in out[field].items() if k != key}
    return out


def by_sample(directory: Path) -> dict[tuple[str, int], dict]:
    return {(r.task, r.doc_id): r.model_dump() for r in read_records(sorted(Path(directory).glob("*.jsonl")))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--tolerance", type=float, default=1e-4, help="for floats (scores, entropies)")
    parser.add_argument("--ignore", action="append", default=[], metavar="FIELD[.KEY]",
                        help="a field (or a dict field's key) to leave out of the comparison")
    args = parser.parse_args(argv)
    a, b = by_sample(args.a), by_sample(args.b)
    differ = 0
    for key in sorted(set(a) & set(b)):
        kept_a, kept_b = kept(a[key], args.ignore), kept(b[key], args.ignore)
        if (where := first_difference(kept_a, kept_b, args.tolerance, "record")) is not None:
            differ += 1
            print(f"{key[0]} doc {key[1]}: {where}")
    only = len(set(a) ^ set(b))
    print(f"{len(set(a) & set(b))} samples in both ({len(a)} and {len(b)}): {differ} differ, {only} in one run only")
    return int(bool(differ or only))


if __name__ == "__main__":
    sys.exit(main())
