"""The old name of collab_eval.costed_tasks, kept for the costed-task files that
``collab-eval costed-tasks`` wrote before the rename: each one imports
``from collab_eval.task_functions import CostedTask``. New files import collab_eval.costed_tasks."""
from collab_eval.costed_tasks import CostedTask, doc_to_visual

__all__ = ["CostedTask", "doc_to_visual"]
