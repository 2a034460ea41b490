"""Placeholder of the family declaration (COMMON.md agreement 2) until the registry helper's
module is merged; the lead drops this commit at merge."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str                          # "llava_next": lmms-eval model "collab_llava_next", tiny "tiny-llava-next"
    server: str                        # "model_adapters.llava_next:LlavaNextServer" (imported only when used)
    reference_checkpoints: tuple[str, ...]  # hub ids; the first is pretrained's default
    lmms_eval_model: str               # lmms-eval's own adapter for the same checkpoints, e.g. "llava_hf"
    lmms_eval_model_args: str = ""     # what that adapter needs on a CPU, e.g. "device_map=cpu"
    tiny: str | None = None            # tiny builder "collab_eval.lab.tiny_checkpoints:build_tiny_llava_next"
    trained: str | None = None         # shipped trained weights' short name, e.g. "smalldetail-llava-next"
    recipe: str | None = None          # training recipe, e.g. "collab_eval.lab.train_smalldetail:LLAVA_NEXT"
