"""Checkpoints the project builds itself, reachable by short names in ``pretrained=``."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from collab_eval.shipped import WEIGHTS_DIR

# Random-weight checkpoints built on first use: the name of their builder in
# collab_eval.lab.tiny_checkpoints, imported only then (the runtime does not depend on the lab).
BUILDERS = {
    "tiny-llava": "build_tiny_llava",
    "tiny-qwen2-vl": "build_tiny_qwen2_vl",
    "tiny-instructblip": "build_tiny_instructblip",
    "tiny-qwen2-5-vl": "build_tiny_qwen2_5_vl",
    "tiny-qwen3-vl": "build_tiny_qwen3_vl",
    "geometry-llava": "build_geometry_llava",  # LLaVA-1.5's 576 image tokens, 145 M params (timing)
}


# Trained checkpoints shipped inside the package (collab_eval/weights/<name>/), reproduced by the
# training script: python -m collab_eval.lab.train_smalldetail --family <family>.
PACKAGED = {name: WEIGHTS_DIR / name
            for name in ("smalldetail-llava", "smalldetail-qwen2-vl", "smalldetail-instructblip")}


def cache_dir() -> Path:
    return Path(os.environ.get("COLLAB_EVAL_CACHE", Path.home() / ".cache" / "collab_eval"))


def resolve(name: str) -> str:
    """A short name becomes the path of its (built once, then cached) checkpoint; any
    other value is a local path or hub id and is returned as is. Packaged trained
    checkpoints resolve to their files."""
    if name in PACKAGED:
        return str(PACKAGED[name])
    if name not in BUILDERS:
        return name
    target = cache_dir() / name
    if not (target / "config.json").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
        from collab_eval.lab import tiny_checkpoints
        getattr(tiny_checkpoints, BUILDERS[name])(staging)
        try:  # atomic: concurrent ranks may build at once; the first rename wins
            staging.rename(target)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def checkpoint_identity(pretrained: str) -> str:
    """The checkpoint as a run's settings name it: a local one by its absolute path (the
    same from any working directory), a hub one by its id."""
    path = Path(pretrained).expanduser()
    return str(path.resolve()) if path.exists() else pretrained
