"""Checkpoints the project builds itself, reachable by short names in ``pretrained=``."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from collab_eval import families
from collab_eval.shipped import WEIGHTS_DIR

# Random-weight checkpoints built on first use beside the families' own (tiny-<name>, from the
# registry): the name of their builder in collab_eval.lab.tiny_checkpoints, imported only then
# (the runtime does not depend on the lab).
EXTRA_BUILDERS = {
    "geometry-llava": "collab_eval.lab.tiny_checkpoints:build_geometry_llava",  # LLaVA-1.5's 576 image tokens (timing)
}


def builders() -> dict[str, str]:
    """Short name -> its builder (``module:function``): every family's ``tiny-<name>`` and the extras."""
    return {**{name: family.tiny for name, family in families.tiny_checkpoints().items()}, **EXTRA_BUILDERS}


def packaged() -> dict[str, Path]:
    """Trained checkpoints shipped inside the package (collab_eval/weights/<name>/), one per family
    that declares ``trained``; reproduced by python -m collab_eval.lab.train_smalldetail --family <recipe>."""
    return {name: WEIGHTS_DIR / name for name in families.trained_checkpoints()}


def short_names() -> list[str]:
    return [*builders(), *packaged()]


def cache_dir() -> Path:
    return Path(os.environ.get("COLLAB_EVAL_CACHE", Path.home() / ".cache" / "collab_eval"))


def resolve(name: str) -> str:
    """A short name becomes the path of its (built once, then cached) checkpoint; any
    other value is a local path or hub id and is returned as is. Packaged trained
    checkpoints resolve to their files."""
    if "/" in name or os.sep in name:  # a path or hub id: no short name has one (nor a need to list families)
        return name
    if name in (shipped := packaged()):
        return str(shipped[name])
    if name not in (known := builders()):
        return name
    target = cache_dir() / name
    if not (target / "config.json").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
        families.load_attribute(known[name], f"checkpoint {name}: builder")(staging)
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
