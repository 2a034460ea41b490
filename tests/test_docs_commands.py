"""Every command in README.md and docs/*.md runs as written.

Fast: each ``collab-eval`` command in a fenced bash/sh/console block is parsed by the real
``collab-eval`` argument parser; each ``lmms-eval`` command (plain or under ``accelerate launch
-m lmms_eval``) is parsed by lmms-eval's own parser, names a known model, and passes only model
args that model allows. Each ``python -m MODULE`` names a module that exists.
Slow: the README's quick start runs on two documents per task, then the README's report, check
and calibrate examples run on what it wrote."""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from collab_eval import families

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(bash|sh|console)\s*$")
COLLAB_MODELS = tuple(f.model_id for f in families.all_families())  # every registered family
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Command:
    """One simple command of a doc's code block, as shell words (quotes removed, variables and
    ``$(...)`` left as written), and where it was found."""
    doc: str
    line: int
    words: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {' '.join(self.words)}"


def code_blocks(path: Path):
    """(first line number, text) of every fenced bash/sh/console block of a Markdown file."""
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        if FENCE.match(lines[i].strip()):
            start, body = i + 2, []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            yield start, "\n".join(body)
        i += 1


def simple_commands(text: str):
    """(line offset, words) of each simple command: continuation lines joined, comments dropped,
    split at ``&&``, ``||``, ``;``, ``|`` and at shell keywords (``for ...; do X; done``)."""
    logical = []
    for n, raw in enumerate(text.splitlines()):
        line = raw.strip()
        line = line.removeprefix("$ ")  # a console prompt
        if logical and logical[-1][1].endswith("\\"):
            logical[-1] = (logical[-1][0], logical[-1][1][:-1] + " " + line)
        else:
            logical.append((n, line))
    for n, line in logical:
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        try:
            tokens = list(lexer)
        except ValueError:  # an unbalanced quote: let the caller see the raw line
            tokens = line.split()
        words: list[str] = []
        for tok in tokens + [";"]:
            if tok and set(tok) <= set(";&|") or tok in ("do", "then", "else", "done", "fi", "{", "}"):
                if words:
                    yield n, tuple(words)
                words = []
            else:
                words.append(tok)


def doc_commands() -> list[Command]:
    out = []
    for path in DOCS:
        for start, text in code_blocks(path):
            for n, words in simple_commands(text):
                out.append(Command(str(path.relative_to(ROOT)), start + n, words))
                for inner in (m for w in words for m in re.findall(r"\$\(([^()]*)\)", w)):  # $(collab-eval tasks-dir)
                    out += [Command(str(path.relative_to(ROOT)), start + n, sub) for _, sub in simple_commands(inner)]
    return out


COMMANDS = doc_commands()


def of(program: str) -> list[Command]:
    return [c for c in COMMANDS if c.words[0] == program]


def lmms_eval_commands() -> list[Command]:
    """lmms-eval commands, ``accelerate launch ... -m lmms_eval ARGS`` as ``lmms-eval ARGS``."""
    out = of("lmms-eval")
    for c in of("accelerate"):
        if "-m" in c.words and c.words[c.words.index("-m") + 1] == "lmms_eval":
            out.append(Command(c.doc, c.line, ("lmms-eval", *c.words[c.words.index("-m") + 2:])))
    return out


def has_placeholder(words) -> bool:
    return any(w in ("...", "…") for w in words)


# ----- the real parsers ----------------------------------------------------------------------
class _Caught(Exception):
    pass


def collab_eval_parser() -> argparse.ArgumentParser:
    """The parser collab_eval.cli builds: its build_parser() if it has one, else the parser its
    main() builds, caught at its parse_args call."""
    from collab_eval import cli
    if hasattr(cli, "build_parser"):
        return cli.build_parser()
    caught = []
    real = argparse.ArgumentParser.parse_args

    def catch(self, *args, **kwargs):
        caught.append(self)
        raise _Caught
    argparse.ArgumentParser.parse_args = catch
    try:
        cli.main(["tasks-dir"])
    except _Caught:
        pass
    finally:
        argparse.ArgumentParser.parse_args = real
    assert caught, "collab_eval.cli.main built no argument parser"
    return caught[0]


def lmms_eval_parser() -> argparse.ArgumentParser:
    from lmms_eval.__main__ import parse_eval_args
    argv = sys.argv
    sys.argv = ["lmms-eval"]
    try:
        parser, _ = parse_eval_args()
    finally:
        sys.argv = argv
    return parser


def parse_error(parser: argparse.ArgumentParser, args) -> str | None:
    """None if the parser accepts ``args``, else its error message. A word that is only a shell
    variable (``--seed $s`` in a loop) stands for a value the parser would take: 0."""
    args = ["0" if re.fullmatch(r"\$\{?\w+\}?", a) else a for a in args]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            parser.parse_args(args)
        except SystemExit as exit_:
            return err.getvalue().strip() or f"exit {exit_.code}"
    return None


def adapter_classes() -> dict:
    """The collab adapters' classes by model name (each has allowed_args())."""
    from collab_eval import families
    from model_adapters.lmms_adapter import adapter_class
    return {family.model_id: adapter_class(family) for family in families.all_families()}


# ----- fast: what the docs write is what the parsers take -------------------------------------
def test_the_docs_have_commands():
    """The parsing finds the commands the docs are known to hold (so the checks below are not
    vacuous), among them the README's quick start."""
    readme = [c for c in COMMANDS if c.doc == "README.md"]
    assert {c.words[0] for c in readme} >= {"lmms-eval", "collab-eval", "python", "accelerate"}
    assert {c.words[1] for c in of("collab-eval")} >= {"report", "check", "calibrate", "costed-tasks", "tasks-dir"}
    assert quick_start().words[:3] == ("lmms-eval", "--model", "collab_llava")


@pytest.mark.parametrize("command", of("collab-eval"), ids=str)
def test_collab_eval_commands_parse(command):
    assert not has_placeholder(command.words), f"{command}: write the command out in full"
    error = parse_error(collab_eval_parser(), command.words[1:])
    assert error is None, f"{command}\n{error}"


@pytest.mark.parametrize("command", lmms_eval_commands(), ids=str)
def test_lmms_eval_commands_parse(command):
    """lmms-eval's parser takes the flags; the model is a collab adapter or lmms-eval's own; each
    key of --model_args is one the adapter allows (a model given as a shell variable, as in the
    CI loop, must take keys every collab adapter allows)."""
    words = command.words[1:]
    if not has_placeholder(words):
        error = parse_error(lmms_eval_parser(), words)
        assert error is None, f"{command}\n{error}"
    args, _ = lmms_eval_parser().parse_known_args(list(words))
    classes = adapter_classes()
    if args.model.startswith("$"):
        allowed = set.intersection(*(set(c.allowed_args()) for c in classes.values()))
    else:
        from lmms_eval.models import AVAILABLE_MODELS
        assert args.model in COLLAB_MODELS or args.model in AVAILABLE_MODELS, f"{command}: unknown model {args.model}"
        if args.model not in COLLAB_MODELS:
            return
        allowed = set(classes[args.model].allowed_args())
    if args.model_args in ("", "...", "…"):
        return
    for pair in args.model_args.split(","):
        key, sep, value = pair.partition("=")
        assert sep and value, f"{command}: {pair!r} is not key=value"
        assert key in allowed, f"{command}: {key!r} is not a model arg of {args.model}; allowed: {sorted(allowed)}"


@pytest.mark.parametrize("command", [c for c in of("python") if c.words[1:2] == ("-m",)], ids=str)
def test_python_modules_exist(command):
    module = command.words[2]
    if module in ("venv", "pytest", "pip"):
        return
    assert importlib.util.find_spec(module) is not None, f"{command}: no module {module}"


def test_every_model_arg_is_documented():
    """docs/model-args.md has a row for every arg the adapters allow (lmms-eval's batch_size and
    device included)."""
    text = (ROOT / "docs" / "model-args.md").read_text()
    documented = set(re.findall(r"^\| (?:`collab_\w+` \| )?`(\w+)` \|", text, flags=re.MULTILINE))
    allowed = set().union(*(set(c.allowed_args()) for c in adapter_classes().values()))
    assert allowed <= documented, sorted(allowed - documented)


# ----- slow: the README's quick start and its examples, run ----------------------------------
def quick_start() -> Command:
    """The README's main job: its lmms-eval command on the embedded default."""
    found = [c for c in lmms_eval_commands() if c.doc == "README.md" and "pretrained=smalldetail-llava" in
             " ".join(c.words)]
    assert len(found) == 1, found
    return found[0]


def readme_example(subcommand: str) -> Command:
    found = [c for c in of("collab-eval") if c.doc == "README.md" and c.words[1] == subcommand]
    assert found, f"the README has no collab-eval {subcommand} example"
    return found[0]


def sh(words, cwd: Path, extra: tuple = ()) -> subprocess.CompletedProcess:
    """Run a doc's command through bash, as written (variables and $(...) expanded by the shell),
    with ``extra`` words appended, in ``cwd``, with this environment's executables first."""
    line = " ".join(w if re.fullmatch(r"[\w./:=,+@%-]+", w) or w.startswith("$(") else shlex.quote(w)
                    for w in (*words, *extra))
    line = line.replace("$(collab-eval tasks-dir)", '"$(collab-eval tasks-dir)"')
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(["bash", "-c", line], check=False, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=1200)


@pytest.mark.slow
def test_readme_quick_start_and_examples_run(tmp_path):
    """The quick start on two documents per task (run in tmp_path, so its out/demo lands there;
    reports/ linked in for check's baseline), then report, check and calibrate as the README
    writes them."""
    (tmp_path / "reports").symlink_to(ROOT / "reports")
    run = sh(quick_start().words, tmp_path, ("--limit", "2", "--verbosity", "DEBUG"))
    assert run.returncode == 0, run.stderr[-3000:]
    out = tmp_path / "out" / "demo"
    [results] = out.glob("*/*_results.json")
    assert set(json.loads(results.read_text())["results"]) >= {"smalldetail_read", "smalldetail_exist"}
    assert list((out / "records").glob("*.rank0.jsonl")) and list((out / "records").glob("*.run.ndjson"))

    report = sh(readme_example("report").words, tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    for name in ("report.md", "report.html", "summary.json"):
        assert (out / "report" / name).stat().st_size > 0, name
    summary = json.loads((out / "report" / "summary.json").read_text())
    [system] = summary["systems"].values()
    assert set(system["tasks"]) == {"smalldetail_read", "smalldetail_exist"}
    assert all(task["n"] == 2 and task["curves"]["gated"] for task in system["tasks"].values())

    # Two documents against the baseline's 150: compared on what the run has.
    check = sh(readme_example("check").words, tmp_path, ("--allow-subset",))
    assert check.returncode in (0, 1), check.stdout + check.stderr[-3000:]
    assert "comparisons against reports/smalldetail-llava/summary.json" in check.stdout, check.stdout

    calibrate = sh(readme_example("calibrate").words, tmp_path, ("--json",))
    assert calibrate.returncode == 0, calibrate.stderr[-3000:]
    chosen = json.loads(calibrate.stdout)
    assert chosen["tau"] is not None and "policy=threshold" in chosen["model_args"] and chosen["calib"]["n"] >= 1
