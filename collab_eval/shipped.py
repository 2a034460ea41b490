"""Where the files shipped with the package live, whether installed from a checkout or a wheel."""
from __future__ import annotations

from pathlib import Path

import collab_eval.tasks

# The repository's tasks/ (lmms-eval task YAMLs and their local data), packaged as collab_eval.tasks.
TASKS_DIR = Path(collab_eval.tasks.__path__[0])
TASK_DATA_DIR = TASKS_DIR / "data"
# Trained checkpoints, one folder each (pretrained=smalldetail-llava).
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
