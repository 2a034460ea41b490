"""collab_textvqa_mini_ocr: the template's scoring plus per-sample costs."""
from pathlib import Path

from collab_eval.costed_tasks import CostedTask

task = CostedTask(Path(__file__).with_name("_textvqa_template_yaml"), name="collab_textvqa_mini_ocr",
                  split="validation")
process_docs, process_results, metric_list = task.process_docs, task.process_results, task.metric_list
