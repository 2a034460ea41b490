"""lmms-eval model adapters for collaborative edge-to-server inference.

Registered through the ``lmms_eval.models`` entry point (see pyproject.toml)."""


def manifests():
    from lmms_eval.models.registry_v2 import ModelManifest

    return [
        ModelManifest(model_id="collab_llava", simple_class_path="model_adapters.llava.CollabLlava"),
        ModelManifest(model_id="collab_llava_next", simple_class_path="model_adapters.llava_next.CollabLlavaNext"),
        ModelManifest(model_id="collab_qwen2_vl", simple_class_path="model_adapters.qwen2_vl.CollabQwen2VL"),
        ModelManifest(model_id="collab_instructblip",
                      simple_class_path="model_adapters.instructblip.CollabInstructBlip"),
    ]
