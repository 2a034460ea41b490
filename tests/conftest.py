"""Shared fixtures: every test runs offline on checkpoints and data the project builds."""
import os
import tempfile
from pathlib import Path

import pytest

# Set before anything imports transformers/datasets, and inherited by the lmms-eval
# subprocesses the integration tests start.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("COLLAB_EVAL_CACHE", tempfile.mkdtemp(prefix="collab-eval-test-cache-"))

REPO = Path(__file__).resolve().parent.parent
from collab_eval.shipped import TASKS_DIR  # noqa: E402


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
