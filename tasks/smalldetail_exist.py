"""smalldetail_exist: the template's scoring plus per-sample costs."""
from pathlib import Path

from collab_eval.costed_tasks import CostedTask

task = CostedTask(Path(__file__).with_name("_pope_template_yaml"), name="smalldetail_exist", split="test")
process_docs, process_results, metric_list = task.process_docs, task.process_results, task.metric_list
