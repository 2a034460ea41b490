"""What keeps report and check fast at 9,000 samples per task leaves their output unchanged."""
import gc
import json
from pathlib import Path

import pytest

from collab_eval import cli
from collab_eval.analysis.summary import Summary
from tests.report_records import pope_records, textvqa_records, write_run


@pytest.mark.slow  # a second or more: the fast tier stays under a minute
def test_summary_json_is_json_dumps_character_for_character(tmp_path):
    """summary.json is json.dumps(indent=1) of the summary's model_dump: the committed reports
    keep their bytes (ASCII escapes, Python's float repr), and reading it back writes it again unchanged."""
    out = tmp_path / "report"
    run = write_run(tmp_path / "run", pope_records() + textvqa_records())
    assert cli.main(["report", str(run), "--out", str(out)]) == 0
    text = (out / "summary.json").read_text()
    assert text == json.dumps(json.loads(text), indent=1, allow_nan=False) + "\n"
    Summary.read(out / "summary.json").write(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_text() == text


def test_report_and_check_leave_the_garbage_collector_as_they_found_it(tmp_path, capsys):
    run = write_run(tmp_path / "run", pope_records())
    assert cli.main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    assert gc.isenabled() and gc.get_freeze_count() == 0
    assert cli.main(["check", str(run), "--baseline", str(tmp_path / "report" / "summary.json")]) == 0
    assert gc.isenabled() and gc.get_freeze_count() == 0
    assert cli.main(["check", str(tmp_path / "missing"), "--baseline", str(tmp_path / "report" / "summary.json")]) == 2
    assert gc.isenabled() and gc.get_freeze_count() == 0


@pytest.mark.slow  # a second or more: the fast tier stays under a minute
def test_committed_summaries_read_and_written_back_are_byte_identical(tmp_path):
    """The pydantic declarations write the committed reports' summary.json exactly as they are."""
    paths = sorted((Path(__file__).parent.parent / "reports").glob("*/summary.json"))
    assert paths
    for path in paths:
        Summary.read(path).write(tmp_path / "summary.json")
        assert (tmp_path / "summary.json").read_bytes() == path.read_bytes(), path
