"""The ``collab-eval`` command line."""
from __future__ import annotations

import argparse
from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent.parent / "tasks"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="collab-eval", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("tasks-dir", help="print the directory to pass to lmms-eval's --include_path")
    fixtures = sub.add_parser("build-fixtures", help="regenerate the offline TextVQA/POPE fixtures")
    fixtures.add_argument("--out", default=str(TASKS_DIR / "data"))
    build = sub.add_parser("build-tiny", help="build (or find) a tiny checkpoint and print its path")
    build.add_argument("name", choices=["tiny-llava"])
    args = parser.parse_args(argv)

    if args.command == "tasks-dir":
        if not TASKS_DIR.is_dir():
            parser.error(f"no tasks directory at {TASKS_DIR}: install collab-eval from a checkout (pip install -e .)")
        print(TASKS_DIR)
    elif args.command == "build-fixtures":
        from collab_eval.fixtures import write_all
        for path in write_all(args.out):
            print(path)
    elif args.command == "build-tiny":
        from collab_eval.checkpoints import resolve
        print(resolve(args.name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
