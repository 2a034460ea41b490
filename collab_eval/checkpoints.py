"""Checkpoints the project builds itself, reachable by short names in ``pretrained=``."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from collab_eval import tiny

BUILDERS = {
    "tiny-llava": tiny.build_tiny_llava,
    "tiny-qwen2-vl": tiny.build_tiny_qwen2_vl,
    "tiny-instructblip": tiny.build_tiny_instructblip,
}


# Trained checkpoints shipped inside the package (collab_eval/weights/<name>/), reproduced by
# their training scripts (smalldetail-llava: python -m collab_eval.train_smalldetail).
PACKAGED = {
    "smalldetail-llava": Path(__file__).resolve().parent / "weights" / "smalldetail-llava",
}


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
        BUILDERS[name](staging)
        try:  # atomic: concurrent ranks may build at once; the first rename wins
            staging.rename(target)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
    return str(target)
