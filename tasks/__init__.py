"""lmms-eval task YAMLs and their local data (installed as collab_eval.tasks)."""
