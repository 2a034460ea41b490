"""What keeps report and check fast at 9,000 samples per task leaves their output unchanged."""
import gc
import json

from collab_eval import cli
from collab_eval.analysis.summary import json_text
from tests.report_records import pope_records, textvqa_records, write_run


def test_summary_json_text_is_json_dumps_character_for_character(tmp_path):
    out = tmp_path / "report"
    assert cli.main(["report", str(write_run(tmp_path / "run", pope_records() + textvqa_records())), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (out / "summary.json").read_text() == json.dumps(summary, indent=1, allow_nan=False) + "\n"
    odd = {"empty": [], "none": {}, "nested": [1, [2, {"x": None}], "é\u2028<\"", True, -0.0, 1e16, 5e-324],
           "deep": {"k": [{"z": 1.5, "y": "inf"}, [[]]]}, "int keys": {1: 2, 3: [4]}, "float": 0.1 + 0.2}
    for value in (summary, odd, [], {}, 1, "s", None, [{}], {"a": {}}):
        assert json_text(value) == json.dumps(value, indent=1, allow_nan=False)


def test_report_and_check_leave_the_garbage_collector_as_they_found_it(tmp_path, capsys):
    run = write_run(tmp_path / "run", pope_records())
    assert cli.main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    assert gc.isenabled() and gc.get_freeze_count() == 0
    assert cli.main(["check", str(run), "--baseline", str(tmp_path / "report" / "summary.json")]) == 0
    assert gc.isenabled() and gc.get_freeze_count() == 0
    assert cli.main(["check", str(tmp_path / "missing"), "--baseline", str(tmp_path / "report" / "summary.json")]) == 2
    assert gc.isenabled() and gc.get_freeze_count() == 0
