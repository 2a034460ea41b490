"""The harness-overhead benchmarks' arithmetic: a collab run's model time is its records' server
steps, and the edge's per-sample CPU table is computed by the pipeline's own edge functions."""
import pytest
from PIL import Image

from collab_eval.edge import Codec
from collab_eval.lab.edge_timing import STEPS, edge_costs, llava_frame, table
from collab_eval.lab.timing import Split, records_model_seconds
from collab_eval.records import RecordWriter, SampleRecord


def test_model_time_is_the_records_server_steps_and_harness_the_rest(tmp_path):
    writer = RecordWriter(tmp_path, "run", 0)
    for doc_id, seconds in enumerate([{"edge_global": 0.5, "stage1": 0.25, "roi": 0.125, "edge_local": 0.5,
                                       "stage2": 0.25, "total": 1.625},
                                      {"edge_global": 0.5, "stage1": 0.5, "total": 1.0}]):
        writer.write(SampleRecord(task="t", doc_id=doc_id, question="q", model="m", codec="png", policy="always",
                                  seconds=seconds))
    model = records_model_seconds([tmp_path / "run.rank0.jsonl", tmp_path / "missing.jsonl"])
    assert model == pytest.approx(0.25 + 0.125 + 0.25 + 0.5)  # the edge's steps run on their own threads
    split = Split(wall=2.0, model=model)
    assert split.harness == pytest.approx(0.875) and "44% of the wall time" in split.line()
    assert Split.median([Split(1, 0.5), Split(3, 1), Split(2, 0.75)]) == Split(2, 0.75)


def test_edge_costs_time_each_step_of_one_sample():
    original = Image.new("RGB", (96, 64), "white")
    for spec in ("png", "jpeg:90"):
        ms = edge_costs(original, Codec.parse(spec), side=32, repeat=1)
        assert list(ms) == list(STEPS) and all(v >= 0 for v in ms.values())
    assert llava_frame(96, 64, 32) == ((16.0, 0.0, 80.0, 64.0), (32, 32))  # short side, centre square
    rows = table([("96x64", "png", dict.fromkeys(STEPS, 2.5))])
    assert rows.splitlines()[-1] == "| 96x64 | png | 2.5 | 2.5 | 2.5 | 2.5 | 10.0 | 100 |"
