"""The lmms-eval model class of every registered family, by family name:
``model_adapters.registered.<name>`` (what model_adapters.manifests points lmms-eval at).
The class is made from the family's declaration on first use (lmms_adapter.adapter_class)."""
from __future__ import annotations


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    from collab_eval import families
    from model_adapters.lmms_adapter import adapter_class
    try:
        family = families.get(name)
    except families.FamilyError as err:
        raise AttributeError(f"model_adapters.registered has no {name!r}: {err}") from None
    return adapter_class(family)
