"""Shared fixtures: every test runs offline on checkpoints and data the project builds."""
import os
from pathlib import Path

import pytest

# Set before anything imports transformers/datasets, and inherited by the lmms-eval
# subprocesses the integration tests start.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
# One torch/OpenMP thread per lmms-eval subprocess unless the caller chose: torch's default of
# one thread per core collapses on a loaded shared machine (issue 11: 30x slower on 2 cores),
# and the tiny models gain nothing from more.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from hypothesis import HealthCheck, settings  # noqa: E402

from collab_eval import families  # noqa: E402
from tests.helpers import MINI_LIMIT, MINI_TASKS, Run, Spec, evaluate, evaluate_many  # noqa: E402

# Generated examples per property test (hypothesis: tests/test_properties.py,
# tests/test_study_properties.py), chosen by HYPOTHESIS_PROFILE: "fast", the default (the fast
# tier's budget), "ci" (.ci/run sets it: 200 each, the count the tests were
# written with, 300 for the one written with 300), "thousands" (5,000 each, by hand). Tests that
# were written with a count other than 200 scale it with the profile (property_examples).
PROPERTY_EXAMPLES = {"fast": 40, "ci": 200, "thousands": 5000}
for _name, _count in PROPERTY_EXAMPLES.items():
    settings.register_profile(_name, max_examples=_count, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))


@pytest.fixture(scope="session", autouse=True)
def checkpoint_cache(tmp_path_factory) -> None:
    """The tiny checkpoints are built into this session's temporary directory (inherited by
    the lmms-eval subprocesses), unless COLLAB_EVAL_CACHE is set."""
    os.environ.setdefault("COLLAB_EVAL_CACHE", str(tmp_path_factory.mktemp("checkpoints")))


@pytest.fixture(scope="session")
def tiny_llava_path() -> str:
    from collab_eval.checkpoints import resolve
    return resolve("tiny-llava")


@pytest.fixture(scope="session")
def tiny_qwen2_vl_path() -> str:
    from collab_eval.checkpoints import resolve
    return resolve("tiny-qwen2-vl")


@pytest.fixture(scope="session")
def tiny_instructblip_path() -> str:
    from collab_eval.checkpoints import resolve
    return resolve("tiny-instructblip")


# The tiny LLaVA runs that tests in several files share, made together in ONE lmms-eval process
# (tests/helpers.py evaluate_many: lmms-eval --config) the first time any of them is asked for:
# test_lmms_cli.py (never, always, random), test_report_lmms.py (always), test_systems.py (always,
# always at layer 0).
SHARED_TINY_LLAVA_RUNS = (("policy=never", MINI_TASKS), ("policy=always", MINI_TASKS),
                          ("policy=random,rate=0.5,seed=3", MINI_TASKS),
                          ("policy=always,layer=0", ("collab_pope_mini",)))


@pytest.fixture(scope="session")
def tiny_llava_run(tiny_llava_path, tmp_path_factory):
    """collab_llava on the tiny LLaVA through the lmms-eval command line, on the first
    MINI_LIMIT documents of each of MINI_TASKS: run(policy_args, tasks) -> Run. Each argument
    set runs once per session; the tests that share one (the always run) share its outputs.
    The argument sets of SHARED_TINY_LLAVA_RUNS run together in one lmms-eval process when the
    first of them is asked for; any other runs in its own process when asked for."""
    done = {}

    def spec(policy_args: str, tasks: tuple[str, ...]) -> Spec:
        out = tmp_path_factory.mktemp("tiny-llava-run")
        return Spec("collab_llava", f"pretrained={tiny_llava_path},{policy_args},records_dir={out / 'records'}",
                    ",".join(tasks), out, options=("--limit", str(MINI_LIMIT)))

    def run(policy_args: str, tasks: tuple[str, ...] = MINI_TASKS) -> Run:
        key = (policy_args, tuple(tasks))
        if key not in done:
            keys = [k for k in SHARED_TINY_LLAVA_RUNS if k not in done] if key in SHARED_TINY_LLAVA_RUNS else [key]
            done.update(zip(keys, evaluate_many([spec(*k) for k in keys])))
        return done[key]
    return run


# The README's main job: the tasks of a trained family's always run (trained_always_run).
TRAINED_TASKS = ("smalldetail_read", "smalldetail_exist")


@pytest.fixture(scope="session")
def trained_always_run(tmp_path_factory):
    """run(family) -> Run: the family's shipped trained checkpoint (a registered family's name,
    its ``trained``), policy=always, on the whole test splits of TRAINED_TASKS, through the
    lmms-eval command line: the README's main job, and the run CI's regression gate checks.
    Made once per session and family (tests/test_smalldetail.py's bars, tests/test_calibrate.py).

    Where COLLAB_EVAL_TRAINED_RUNS names a folder (.ci/run sets it), the run is made in
    <folder>/<checkpoint> (unless that exists already), where CI's regression gate finds it and
    checks it instead of running the same command again."""
    done = {}

    def run(family: str) -> Run:
        if family not in done:
            declared = families.get(family)
            keep = os.environ.get("COLLAB_EVAL_TRAINED_RUNS")
            out = claimed(Path(keep) / declared.trained) if keep else None
            if out is None:
                out = tmp_path_factory.mktemp(f"trained-{family}")
            done[family] = evaluate(declared.model_id, f"pretrained={declared.trained},policy=always,"
                                    f"records_dir={out / 'records'}", ",".join(TRAINED_TASKS), out)
        return done[family]
    return run


def claimed(folder: Path) -> Path | None:
    """``folder``, made here, or None where it exists already: mkdir is atomic, so of several
    pytest-xdist workers wanting the same run exactly one makes it there."""
    try:
        folder.mkdir(parents=True)
    except FileExistsError:
        return None
    return folder


@pytest.fixture(scope="session")
def tiny_server():
    """server(family, **args): the family's model wrapper (model_adapters.server) on its tiny
    checkpoint (or ``checkpoint=``, a name checkpoints.resolve knows), loaded once per session
    and argument set (``fresh=True``: a new one, for a test that changes it); family is a
    registered family's name (FAMILIES). Tests that change a shared server's state restore it."""
    from collab_eval.checkpoints import resolve
    loaded = {}

    def server(family: str, fresh: bool = False, checkpoint: str | None = None, **args):
        declared = families.get(family)
        checkpoint = checkpoint or declared.tiny_name
        key = (family, checkpoint, tuple(sorted(args.items())))
        if fresh or key not in loaded:
            made = declared.server_class()(resolve(checkpoint), name=declared.model_id, **args)
            if fresh:
                return made
            loaded[key] = made
        return loaded[key]
    return server
