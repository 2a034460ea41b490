"""lmms-eval model adapters for collaborative edge-to-server inference.

Registered through the ``lmms_eval.models`` entry point (see pyproject.toml): one model
``collab_<name>`` per family registered under ``collab_eval.families`` (collab_eval.families)."""


def manifests():
    from lmms_eval.models.registry_v2 import ModelManifest
    from loguru import logger

    from collab_eval import families

    installed = families.installed()
    for name, why in installed.broken.items():
        logger.warning(f"collab-eval: family {name} is registered but cannot be loaded: {why}")
    # model_adapters.registered makes each family's lmms-eval class on first use.
    return [ModelManifest(model_id=family.model_id, simple_class_path=f"model_adapters.registered.{family.name}")
            for family in installed.families.values()]
