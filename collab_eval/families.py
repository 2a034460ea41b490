"""Model families: the registered plug-ins that say which VLMs collab-eval can serve.

A family is declared once, as a ``Family`` value named ``FAMILY`` in its module, and
registered under the entry-point group ``collab_eval.families`` (the entry point's name is
the family's ``name``). The built-in families (LLaVA-1.5, Qwen2-VL, InstructBLIP, LLaVA-NeXT) are
registered in collab-eval's own pyproject.toml exactly as a user's would be::

    [project.entry-points."collab_eval.families"]
    llava = "model_adapters.llava:FAMILY"

Everything that lists families is derived from this registry: the models lmms-eval finds
(``collab_<name>``, model_adapters.manifests), the short checkpoint names (``tiny-<name>``
and the trained ones, collab_eval.checkpoints), the command line's choices, the families'
training recipes, the tests' parametrisation and CI's loop over trained checkpoints
(``collab-eval families``). docs/families.md, "Adding a family", walks through one.

The declaration holds only names (dotted ``module:attribute`` strings): listing the families
imports no model code; the server class, tiny builder and recipe are imported when used.
"""
from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from functools import cache

from collab_eval import plugins

GROUP = "collab_eval.families"
# The order families are listed in (CLI choices, docs table, CI): the built-ins first, in the
# order the project grew, then plug-ins by name.
BUILTIN_ORDER = ("llava", "qwen2_vl", "instructblip", "llava_next", "qwen2_5_vl", "qwen3_vl")
NAME = re.compile(r"[a-z][a-z0-9_]*\Z")
COMPARISONS = ("answer", "after_prompt", "none")


class FamilyError(ValueError):
    """A family that cannot be used: unknown, failed to load, or declared wrongly."""


@dataclass(frozen=True)
class Family:
    """One model family, as registered. Field names are a shared agreement: never rename them
    (new fields get defaults)."""
    name: str  # "llava_next": lmms-eval model "collab_llava_next", tiny "tiny-llava-next"
    server: str  # "model_adapters.llava_next:LlavaNextServer" (imported only when used)
    reference_checkpoints: tuple[str, ...]  # hub ids; the first is pretrained's default
    lmms_eval_model: str  # lmms-eval's own adapter for the same checkpoints, e.g. "llava_hf"
    lmms_eval_model_args: str = ""  # what that adapter needs on a CPU, e.g. "device_map=cpu"
    tiny: str | None = None  # tiny builder "collab_eval.lab.tiny_checkpoints:build_tiny_llava_next"
    trained: str | None = None  # shipped trained weights' short name, e.g. "smalldetail-llava-next"
    recipe: str | None = None  # training recipe, e.g. "collab_eval.lab.train_smalldetail:LLAVA_NEXT"
    # --- added by the registry (defaults keep every declaration above valid) ---
    title: str = ""  # how people call the model, for the docs table: "LLaVA-1.5"
    # Where lmms-eval's own adapter differs from collab's policy=never by design or by fault, in
    # one line (docs/families.md's table; the equivalence tests compare what was generated).
    lmms_eval_differs: str = ""
    # How tests/test_never_equals_lmms_eval.py compares policy=never,codec=png with that adapter,
    # answer by answer: "answer" (the same text), "after_prompt" (its response is the prompt, then
    # the same text: lmms-eval's instructblip under transformers 5), "none" (it sees other pixels,
    # e.g. re-encoded as JPEG: not compared sample by sample; say so in lmms_eval_differs).
    lmms_eval_compare: str = "answer"
    # How a report names this family's never runs, where a never run of it is a baseline in its own
    # right: "HD baseline" for LLaVA-NeXT (the released form of the paper's LLaVA-1.5-HD). A point
    # labelled "HD baseline (never)"; "" keeps "never".
    never_label: str = ""

    def __post_init__(self):
        if not isinstance(self.name, str) or not NAME.match(self.name):
            raise FamilyError(f"Family.name must be lower-case letters, digits and '_' (a Python name), "
                              f"got {self.name!r}")
        for field_name in ("server", "tiny", "recipe"):
            value = getattr(self, field_name)
            if value is not None and (not isinstance(value, str) or ":" not in value):
                raise FamilyError(f"family {self.name}: {field_name} must be 'module:attribute', got {value!r}")
        if isinstance(self.reference_checkpoints, str) or not self.reference_checkpoints:
            raise FamilyError(f"family {self.name}: reference_checkpoints must be a non-empty tuple of hub ids, "
                              f"got {self.reference_checkpoints!r}")
        object.__setattr__(self, "reference_checkpoints", tuple(self.reference_checkpoints))
        if self.lmms_eval_compare not in COMPARISONS:
            raise FamilyError(f"family {self.name}: lmms_eval_compare must be one of {COMPARISONS}, "
                              f"got {self.lmms_eval_compare!r}")
        if not isinstance(self.lmms_eval_model, str) or not self.lmms_eval_model:
            raise FamilyError(f"family {self.name}: lmms_eval_model must name lmms-eval's own adapter, "
                              f"got {self.lmms_eval_model!r}")

    # ----- names derived from the declaration ---------------------------------------------------
    @property
    def model_id(self) -> str:
        """The model lmms-eval runs: ``--model collab_<name>``."""
        return f"collab_{self.name}"

    @property
    def pretrained(self) -> str:
        """``pretrained``'s default: the first reference checkpoint."""
        return self.reference_checkpoints[0]

    @property
    def tiny_name(self) -> str | None:
        """The short name of the tiny random-weight checkpoint (``tiny-<name>``, '_' as '-'),
        None where the family has no builder."""
        return f"tiny-{self.name.replace('_', '-')}" if self.tiny else None

    # ----- what the declaration names, imported when used ----------------------------------------
    def server_class(self) -> type:
        """The family's ``ServerModel`` subclass."""
        return load_attribute(self.server, f"family {self.name}: server")

    def build_tiny(self, out_dir):
        if not self.tiny:
            raise FamilyError(f"family {self.name} has no tiny checkpoint builder")
        return load_attribute(self.tiny, f"family {self.name}: tiny")(out_dir)

    def recipe_class(self):
        if not self.recipe:
            raise FamilyError(f"family {self.name} has no small-detail training recipe")
        return load_attribute(self.recipe, f"family {self.name}: recipe")

    def default_layer(self) -> tuple[int, int]:
        """The default map layer, as a fraction of the language model's depth (``vicrop_layer``)."""
        return tuple(self.server_class().vicrop_layer)


def load_attribute(path: str, what: str):
    module, _, attribute = path.partition(":")
    try:
        value = importlib.import_module(module)
        for part in attribute.split("."):
            value = getattr(value, part)
    except (ImportError, AttributeError) as err:
        raise FamilyError(f"{what} {path!r} cannot be imported: {type(err).__name__}: {err}") from err
    return value


# ----- the registry --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Installed:
    """The families found under the entry-point group, in listing order, and those that failed to load."""
    families: dict[str, Family]
    broken: dict[str, str]  # entry-point name -> why it could not be loaded


@cache
def installed() -> Installed:
    """Every family registered under ``collab_eval.families`` (read once per process)."""
    loaded = plugins.load_group(GROUP, accept, BUILTIN_ORDER)
    return Installed(loaded.found, loaded.broken)


def accept(ep, family) -> Family:
    if not isinstance(family, Family):
        raise plugins.NotAPlugin(f"{ep.value} is a {type(family).__name__}, not a collab_eval.families.Family")
    if family.name != ep.name:
        raise plugins.NotAPlugin(f"{ep.value} declares name {family.name!r}: the entry point must be named the same")
    return family


def all_families() -> list[Family]:
    """The installed families, in listing order."""
    return list(installed().families.values())


def names() -> list[str]:
    return list(installed().families)


def get(name: str) -> Family:
    """The family called ``name`` (or whose lmms-eval model is ``name``); a FamilyError listing
    the installed ones otherwise."""
    families = installed()
    name = str(name)
    if name in families.families:
        return families.families[name]
    for family in families.families.values():
        if family.model_id == name:
            return family
    if name in families.broken:
        raise FamilyError(f"family {name}: installed but cannot be loaded ({families.broken[name]})")
    listing = ", ".join(families.families) or "none (reinstall collab-eval: its entry points are missing)"
    raise FamilyError(f"family must be one of the installed families ({listing}; entry-point group {GROUP}), "
                      f"got {name!r}")


def tiny_checkpoints() -> dict[str, Family]:
    """Short name ``tiny-<name>`` -> its family, for every family with a tiny builder."""
    return {f.tiny_name: f for f in all_families() if f.tiny_name}


def trained_checkpoints() -> dict[str, Family]:
    """Short name of the shipped trained checkpoint -> its family."""
    return {f.trained: f for f in all_families() if f.trained}
