"""Shared fixtures: every test runs offline on checkpoints and data the project builds."""
import os

import pytest

# Set before anything imports transformers/datasets, and inherited by the lmms-eval
# subprocesses the integration tests start.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
# One torch/OpenMP thread per lmms-eval subprocess unless the caller chose: torch's default of
# one thread per core collapses on a loaded shared machine (issue 11: 30x slower on 2 cores),
# and the tiny models gain nothing from more.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from tests.helpers import MINI_LIMIT, MINI_TASKS, Run, evaluate  # noqa: E402


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


@pytest.fixture(scope="session")
def tiny_llava_run(tiny_llava_path, tmp_path_factory):
    """collab_llava on the tiny LLaVA through the lmms-eval command line, on the first
    MINI_LIMIT documents of each of MINI_TASKS: run(policy_args, tasks) -> Run. Each argument
    set runs once per session; the tests that share one (the always run) share its outputs."""
    done = {}

    def run(policy_args: str, tasks: tuple[str, ...] = MINI_TASKS) -> Run:
        if (policy_args, tasks) not in done:
            out = tmp_path_factory.mktemp("tiny-llava-run")
            done[policy_args, tasks] = evaluate(
                "collab_llava", f"pretrained={tiny_llava_path},{policy_args},records_dir={out / 'records'}",
                ",".join(tasks), out, extra=("--limit", str(MINI_LIMIT)))
        return done[policy_args, tasks]
    return run


SERVERS = {"llava": "model_adapters.llava.LlavaServer", "qwen2_vl": "model_adapters.qwen2_vl.Qwen2VLServer",
           "instructblip": "model_adapters.instructblip.InstructBlipServer",
           "qwen2_5_vl": "model_adapters.qwen2_5_vl.Qwen2_5VLServer",
           "qwen3_vl": "model_adapters.qwen3_vl.Qwen3VLServer"}


@pytest.fixture(scope="session")
def tiny_server():
    """server(family, **args): the family's model wrapper (model_adapters.server) on its tiny
    checkpoint (or ``checkpoint=``, a name checkpoints.resolve knows), loaded once per session
    and argument set (``fresh=True``: a new one, for a test that changes it); family is llava,
    qwen2_vl or instructblip. Tests that change a shared server's state restore it."""
    import importlib

    from collab_eval.checkpoints import resolve
    loaded = {}

    def server(family: str, fresh: bool = False, checkpoint: str | None = None, **args):
        checkpoint = checkpoint or f"tiny-{family.replace('_', '-')}"
        key = (family, checkpoint, tuple(sorted(args.items())))
        if fresh or key not in loaded:
            module, name = SERVERS[family].rsplit(".", 1)
            server_class = getattr(importlib.import_module(module), name)
            made = server_class(resolve(checkpoint), name=f"collab_{family}", **args)
            if fresh:
                return made
            loaded[key] = made
        return loaded[key]
    return server
