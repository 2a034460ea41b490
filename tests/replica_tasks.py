"""Small local replicas of lmms-eval image tasks, in their real schemas and scored by
lmms-eval's own functions (``!function lmms_eval.tasks...``): a DocVQA-like task scored by the
built-in ``anls`` metric (no process_results), an MME-like task whose process_results returns
``mme_perception_score`` or ``mme_cognition_score`` depending on the document, and a GQA-like
task scored by the built-in ``exact_match`` with its options."""
from pathlib import Path

from datasets import Dataset, Features, Image, Sequence, Value
from PIL import Image as PILImage
from PIL import ImageDraw

DOCVQA = "replica_docvqa_val"
MME = "replica_mme"
GQA = "replica_gqa"

DOCVQA_DOCS = [
    {"questionId": "49153", "question": "What is the date on the letter?", "question_types": ["handwritten"],
     "docId": 14465, "ucsf_document_id": "txpp0227", "ucsf_document_page_no": "10",
     "answers": ["1/8/93", "january 8 1993"], "data_split": "val"},
    {"questionId": "24580", "question": "Who signed the memo?", "question_types": ["layout"],
     "docId": 7027, "ucsf_document_id": "mxcj0037", "ucsf_document_page_no": "1",
     "answers": ["R. J. Marshall"], "data_split": "val"},
]
MME_DOCS = [
    {"question_id": "code_reasoning/0020.png", "question": "Is the output of the code 12? Please answer yes or no.",
     "answer": "Yes", "category": "code_reasoning"},
    {"question_id": "OCR/0001.jpg", "question": "Is the word in the logo \"high\"? Please answer yes or no.",
     "answer": "No", "category": "OCR"},
    # MME asks two questions per image (its aggregation requires the pair).
    {"question_id": "code_reasoning/0020.png", "question": "Is the output of the code 11? Please answer yes or no.",
     "answer": "No", "category": "code_reasoning"},
    {"question_id": "OCR/0001.jpg", "question": "Is the word in the logo \"low\"? Please answer yes or no.",
     "answer": "Yes", "category": "OCR"},
]
GQA_DOCS = [{"id": "201307251", "question": "What color is the sign?", "answer": "yellow"},
            {"id": "201640614", "question": "Is the sign on the left?", "answer": "no"}]

GENERATION = """generation_kwargs:
  max_new_tokens: 8
  temperature: 0
  do_sample: false
lmms_eval_specific_kwargs:
  default:
    pre_prompt: ""
    post_prompt: "\\nAnswer the question using a single word or phrase."
"""

YAMLS = {
    DOCVQA: """doc_to_visual: !function lmms_eval.tasks.docvqa.utils.docvqa_doc_to_visual
doc_to_text: !function lmms_eval.tasks.docvqa.utils.docvqa_doc_to_text
doc_to_target: "answers"
metric_list:
  - metric: anls
    aggregation: mean
    higher_is_better: true
""",
    MME: """doc_to_visual: !function lmms_eval.tasks.mme.utils.mme_doc_to_visual
doc_to_text: !function lmms_eval.tasks.mme.utils.mme_doc_to_text
doc_to_target: "answer"
process_results: !function lmms_eval.tasks.mme.utils.mme_process_results
metric_list:
  - metric: mme_perception_score
    aggregation: !function lmms_eval.tasks.mme.utils.mme_aggregate_results
    higher_is_better: true
  - metric: mme_cognition_score
    aggregation: !function lmms_eval.tasks.mme.utils.mme_aggregate_results
    higher_is_better: true
""",
    GQA: """doc_to_visual: !function lmms_eval.tasks.gqa.utils.gqa_doc_to_visual
doc_to_text: !function lmms_eval.tasks.gqa.utils.gqa_doc_to_text
doc_to_target: "answer"
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: true
""",
}
SCHEMAS = {
    DOCVQA: Features({"questionId": Value("string"), "question": Value("string"),
                      "question_types": Sequence(Value("string")), "image": Image(), "docId": Value("int64"),
                      "ucsf_document_id": Value("string"), "ucsf_document_page_no": Value("string"),
                      "answers": Sequence(Value("string")), "data_split": Value("string")}),
    MME: Features({"question_id": Value("string"), "image": Image(), "question": Value("string"),
                   "answer": Value("string"), "category": Value("string")}),
    GQA: Features({"id": Value("string"), "question": Value("string"), "answer": Value("string"), "image": Image()}),
}
DOCS = {DOCVQA: DOCVQA_DOCS, MME: MME_DOCS, GQA: GQA_DOCS}
SPLITS = {DOCVQA: "validation", MME: "test", GQA: "testdev"}


def page(i: int, size=(180, 240)) -> PILImage.Image:
    image = PILImage.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    for line in range(6):
        draw.text((10, 20 + 30 * line), f"line {line} of page {i}", fill="black")
    return image


def write_replicas(directory: Path) -> Path:
    """The three tasks' parquets and YAMLs under ``directory``; returns the include path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for task, docs in DOCS.items():
        rows = [{**doc, "image": page(i)} for i, doc in enumerate(docs)]
        data = directory / f"{task}.parquet"
        Dataset.from_list(rows, features=SCHEMAS[task]).to_parquet(str(data))
        split = SPLITS[task]
        (directory / f"{task}.yaml").write_text(
            f"task: {task}\ndataset_path: parquet\ndataset_kwargs:\n  data_files:\n    {split}: {data}\n"
            f"test_split: {split}\noutput_type: generate_until\n" + YAMLS[task] + GENERATION)
    return directory
