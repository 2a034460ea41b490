"""lab.same_records: two runs' records compared sample by sample, run identity and time aside."""
from collab_eval.lab.same_records import main
from collab_eval.records import RecordWriter, SampleRecord


def write(directory, run_id, records):
    writer = RecordWriter(directory, run_id, 0)
    for record in records:
        writer.write(record)


def record(doc_id, run_id, **changed):
    # A possible record: bytes_total is the sum of its parts (records.py refuses one that is not).
    outcome = {"answer": "7", "score": 0.5, "scores": {"max": 0.5}, "bytes_global": 100, "bytes_total": 100, **changed}
    return SampleRecord(run_id=run_id, task="t", doc_id=doc_id, question="q?", model=f"/{run_id}/ckpt", codec="png",
                        policy="always", seconds={"total": {"a": 0.1, "b": 0.2}[run_id]}, **outcome)


def test_equal_but_for_run_and_time_and_floats_within_tolerance(tmp_path, capsys):
    write(tmp_path / "a", "a", [record(0, "a"), record(1, "a")])
    write(tmp_path / "b", "b", [record(1, "b"), record(0, "b", score=0.5 + 5e-5)])
    assert main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert capsys.readouterr().out.strip() == "2 samples in both (2 and 2): 0 differ, 0 in one run only"


def test_a_changed_cost_or_a_missing_sample_is_reported(tmp_path, capsys):
    write(tmp_path / "a", "a", [record(0, "a"), record(1, "a"), record(2, "a")])
    write(tmp_path / "b", "b", [record(0, "b", bytes_local=1, bytes_total=101), record(1, "b", score=0.51)])
    assert main([str(tmp_path / "a"), str(tmp_path / "b")]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "t doc 0: record.bytes_local: 0 != 1",  # the first field that differs
        "t doc 1: record.score: 0.5 != 0.51",
        "2 samples in both (3 and 2): 2 differ, 1 in one run only",
    ]
