"""Hand-made per-sample records (the adapter's JSON-lines format) for report and check tests."""
import json
from pathlib import Path

from collab_eval.records import SampleRecord

POPE = "collab_pope_mini"
TEXTVQA = "collab_textvqa_mini"
TEXTVQA_ANSWERS = ["12"] * 8 + ["red", "unanswerable"]  # "12" scores 1.0, "red" scores 0.3

# The hand case of tests/test_curves.py on POPE: (truth, stage-1 answer, stage-2 answer, score, bytes_total)
POPE_CASE = [("yes", "yes", "no", 2.0, 300), ("no", "yes", "No", 0.5, 200),
             ("yes", "", "yes", None, 400), ("no", "yes", "yes", 1.0, 300)]


def record(task: str, doc_id: int, doc: dict, stage1: str, stage2: str | None, score, bytes_total: int,
           bytes_global: int = 100, policy: str = "always", model: str = "/ckpt/hand-llava", **extra) -> dict:
    retransmitted = stage2 is not None
    r = SampleRecord(
        task=task, doc_id=doc_id, question=doc.get("question", ""), model=model, codec="png", policy=policy,
        answer_stage1=stage1, answer_stage2=stage2, answer=stage2 if retransmitted else stage1,
        retransmitted=retransmitted, score=score, scores={"max": score, "mean": score, "first": score},
        image_size=[64, 48], bytes_original=1000, bytes_global=bytes_global,
        bytes_request=16 if retransmitted else 0, bytes_local=bytes_total - bytes_global - 16 if retransmitted else 0,
        flops={"vision": 4, "projector": 1, "prefill": 3, "decode": 2, "generic": 0,
               "stage2": 20 if retransmitted else 0},
        doc=doc)
    r.bytes_total = r.bytes_global + r.bytes_request + r.bytes_local
    r.flops_total = sum(r.flops.values())
    d = json.loads(r.to_json())
    d.update(extra)
    return d


def pope_records(case=POPE_CASE, **kw) -> list[dict]:
    return [record(POPE, i, {"question_id": str(800000 + i), "question": f"Is there a thing {i}?", "answer": truth},
                   s1, s2, score, total, **kw) for i, (truth, s1, s2, score, total) in enumerate(case)]


def textvqa_records(**kw) -> list[dict]:
    doc = {"question_id": 900000, "question": "what is the number?", "answers": TEXTVQA_ANSWERS}
    return [record(TEXTVQA, 0, doc, "red", "12", 1.5, 250, **kw), record(TEXTVQA, 1, {**doc, "question_id": 900001},
                                                                         "12", "red", 0.25, 250, **kw)]


def write_run(directory: Path, records: list[dict], name: str = "collab_llava-20260101T000000") -> Path:
    path = Path(directory) / "records" / f"{name}.rank0.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return Path(directory)
