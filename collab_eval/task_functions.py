"""Scoring for the cost-aware tasks in tasks/: lmms-eval's own TextVQA and POPE scoring,
plus the sample's bytes, FLOPs and retransmission as metrics averaged into results.json."""
from __future__ import annotations

from lmms_eval.tasks.pope import utils as pope
from lmms_eval.tasks.textvqa import utils as textvqa

from collab_eval import cost_handoff


def doc_to_visual(doc):
    """The document's image exactly as stored: the edge (collab_eval.edge.sanitize) turns it
    into upright RGB, which handles EXIF rotation and 16-bit images that a bare
    ``convert("RGB")`` gets wrong."""
    return [doc["image"]]


def textvqa_process_results(doc, results):
    return {**textvqa.textvqa_process_results(doc, results), **cost_handoff.lookup(doc)}


def pope_process_results(doc, results):
    return {**pope.pope_process_results(doc, results), **cost_handoff.lookup(doc)}
