"""Writing records: one sample's unwritable record fails that sample only; a failing disk
stops the run with a message naming the file and leaves every earlier record readable."""
import json
import os
import re
import subprocess
import sys
import textwrap
import threading

import pytest

from collab_eval.records import RecordWriteError, RecordWriter, SampleRecord, record_path


def sample(doc_id=0, **kw):
    return SampleRecord(run_id="run-x", task="t", doc_id=doc_id, question="q?", model="m", codec="png",
                        policy="threshold", answer="7", bytes_total=100, **kw)


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_infinite_threshold_is_written_as_json_and_reads_back(tmp_path):
    writer = RecordWriter(tmp_path, "run-x", 0)
    writer.write(sample(policy_args={"threshold": float("inf"), "rate": 0.5, "seed": 0}))
    writer.write(sample(1, policy_args={"threshold": float("-inf"), "rate": 0.5, "seed": 0}))
    written = lines(writer.path)
    assert [r["policy_args"]["threshold"] for r in written] == ["inf", "-inf"]
    assert [float(r["policy_args"]["threshold"]) for r in written] == [float("inf"), float("-inf")]
    assert written[0]["run_id"] == "run-x" and list(written[0])[0] == "run_id"


def test_a_document_json_cannot_hold_fails_only_its_sample(tmp_path):
    writer = RecordWriter(tmp_path, "run-x", 0)
    bad = sample(0, doc={"question_id": 3, "question": "q?", "blob": b"\x00\x01", "tags": {"a"}})
    written_bad = writer.write(bad)
    writer.write(sample(1, doc={"question_id": 4}))
    first, second = lines(writer.path)
    reason = "record cannot be written as JSON: document field(s) ['blob', 'tags'] hold values JSON cannot represent"
    assert first["error"] == reason and written_bad.error == reason
    # Scored as a failed sample, failed at writing its record, with every cost it incurred kept.
    assert first["answer"] == "" and first["failed_step"] == "record"
    assert first["bytes_total"] == 100 and written_bad.bytes_total == 100 and first["answer_stage1"] is None
    assert first["doc"] == {"question_id": 3, "question": "q?"}  # the rest of the ground truth stays
    assert second["error"] is None and second["answer"] == "7"


def test_a_full_disk_stops_the_run_naming_the_file(tmp_path):
    target = record_path(tmp_path, "run-x", 0)
    os.symlink("/dev/full", target)  # every write fails with ENOSPC, as on a full disk
    writer = RecordWriter(tmp_path, "run-x", 0)
    try:
        writer.write(sample())
    except RecordWriteError as err:
        message = str(err)
    else:
        raise AssertionError("a write to a full disk must raise")
    assert message.startswith(f"cannot write records to {target}: No space left on device.")
    assert "resume=true" in message


def test_a_failed_fsync_stops_the_run_naming_the_file(tmp_path):
    """fsync runs on the writer's own thread; its failure reaches the run at the next write, at
    ``sync`` (which the run's end waits on) and at ``close``. /dev/null takes writes but refuses
    fsync (EINVAL), as a file system that cannot put data on disk does."""
    target = record_path(tmp_path, "run-x", 0)
    os.symlink("/dev/null", target)
    writer = RecordWriter(tmp_path, "run-x", 0)
    writer.write(sample())
    expected = f"cannot write records to {target}: Invalid argument."
    with pytest.raises(RecordWriteError, match=re.escape(expected)):
        writer.sync()
    with pytest.raises(RecordWriteError, match=re.escape(expected)):
        writer.write(sample(1))
    with pytest.raises(RecordWriteError, match=re.escape(expected)):
        writer.close()


def test_sync_returns_once_every_record_is_written_and_close_stops_the_fsync_thread(tmp_path):
    def syncers():
        return sum(t.name == "collab-records-fsync" and t.is_alive() for t in threading.enumerate())

    before = syncers()
    writer = RecordWriter(tmp_path, "run-x", 0)
    assert syncers() == before + 1
    for doc_id in range(50):
        writer.write(sample(doc_id))
    writer.sync()
    assert [r["doc_id"] for r in lines(writer.path)] == list(range(50))
    writer.close()
    writer.close()  # a second close does nothing
    assert syncers() == before


def test_a_write_cut_short_leaves_only_complete_records(tmp_path):
    """A real partial write: the file size limit (RLIMIT_FSIZE, in a child process) stops a
    record halfway; the writer removes the partial line, so every earlier record reads back."""
    script = textwrap.dedent(f"""
        import resource, signal, sys
        sys.path.insert(0, {os.getcwd()!r})
        from collab_eval.records import RecordWriteError, RecordWriter, SampleRecord
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (3000, resource.RLIM_INFINITY))
        writer = RecordWriter({str(tmp_path)!r}, "run-x", 0)
        n = 0
        try:
            while True:
                writer.write(SampleRecord(run_id="run-x", task="t", doc_id=n, question="q" * 300, model="m",
                                          codec="png", policy="always"))
                n += 1
        except RecordWriteError as err:
            print(n, err)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    written, message = out.stdout.split(" ", 1)
    path = record_path(tmp_path, "run-x", 0)
    assert f"cannot write records to {path}: File too large" in message
    records = lines(path)  # raises on a partial line
    assert int(written) >= 2 and [r["doc_id"] for r in records] == list(range(int(written)))
    assert path.read_bytes().endswith(b"\n")
