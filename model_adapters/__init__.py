"""lmms-eval model adapters for collaborative edge-to-server inference.

Registered through the ``lmms_eval.models`` entry point (see pyproject.toml)."""


def manifests():
    from lmms_eval.models.registry_v2 import ModelManifest

    return [
        ModelManifest(model_id="collab_llava", simple_class_path="model_adapters.llava.CollabLlava"),
        ModelManifest(model_id="collab_qwen2_vl", simple_class_path="model_adapters.qwen2_vl.CollabQwen2VL"),
        ModelManifest(model_id="collab_qwen2_5_vl", simple_class_path="model_adapters.qwen2_5_vl.CollabQwen2_5VL"),
        ModelManifest(model_id="collab_qwen3_vl", simple_class_path="model_adapters.qwen3_vl.CollabQwen3VL"),
        ModelManifest(model_id="collab_instructblip",
                      simple_class_path="model_adapters.instructblip.CollabInstructBlip"),
    ]
