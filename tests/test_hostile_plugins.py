"""A hostile score plug-in and a hostile locator plug-in, installed as a distribution (dist-info
on PYTHONPATH) and run through lmms-eval's command line: every sample's costs and scores are
what was sent and computed, failed samples included (issue 34)."""
import os
import textwrap

import pytest

from tests.helpers import Run, Spec, check_run, records, results_json, run_lmms_eval_many

PLUGIN = '''
import math
import numpy as np
from collab_eval.locators import Located, MapLocator, Mapped

CALLS = [0]


def nan_score(answer):
    """Installed, never chosen: NaN for every answer."""
    return math.nan


def text_score(answer):
    return "0.5"


class Moody(MapLocator):
    """Sample by sample: raises, a map of NaN, a finite map; then again."""
    def locate(self, ask):
        CALLS[0] += 1
        turn = CALLS[0] % 3
        if turn == 1:
            raise ZeroDivisionError("division by zero")
        return super().locate(ask)

    def image_map(self, ask, image, question_map):
        grid = np.ones((3, 3))
        if CALLS[0] % 3 == 2:
            grid[:] = np.nan
        else:
            grid[0, 0] = 9.0
        return Mapped(grid, {"locate": 1000})


class Outside:
    """A box reaching past the image's top-left corner."""
    kind = "box"

    def locate(self, ask):
        return Located(0, box=(-50, -50, 20, 20), flops={"locate": 3})
'''


@pytest.fixture
def hostile_on_path(tmp_path, monkeypatch):
    site = tmp_path / "site"
    info = site / "hostile_plugins-0.1.dist-info"
    info.mkdir(parents=True)
    (site / "hostile_plugins.py").write_text(textwrap.dedent(PLUGIN))
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hostile-plugins\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[collab_eval.scores]\nnan_score = hostile_plugins:nan_score\ntext_score = hostile_plugins:text_score\n\n"
        "[collab_eval.locators]\nmoody = hostile_plugins:Moody\noutside = hostile_plugins:Outside\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    return site


@pytest.mark.slow
def test_hostile_plugins_through_the_lmms_eval_command_line(hostile_on_path, tiny_llava_path, tmp_path):
    task = "collab_textvqa_mini"
    moody, out = tmp_path / "moody", tmp_path / "outside"
    # Both runs in one lmms-eval process (lmms-eval --config, tests/helpers.py): the moody locator's
    # first, then the outside box's.
    proc = run_lmms_eval_many([
        Spec("collab_llava", f"pretrained={tiny_llava_path},policy=always,locator=moody,"
                             f"records_dir={moody / 'records'}", task, moody, options=("--limit", "3")),
        Spec("collab_llava", f"pretrained={tiny_llava_path},policy=always,locator=outside,score=max,"
                             f"records_dir={out / 'records'}", task, out, options=("--limit", "2"))],
        tmp_path / "config.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = Run(moody, results_json(moody), records(moody / "records"))
    # One warning per hostile score for the process (scores.missing_warning), naming it and what it
    # returned: both come in the first run, where the hostile scores first give no number.
    output = proc.stdout + proc.stderr
    warned = [line for line in output.splitlines() if "recorded as missing" in line]
    assert len(warned) == 2, [line for line in output.splitlines() if "WARNING" in line or "score" in line][:20]
    assert any("score nan_score returned nan" in line for line in warned)
    assert any("score text_score returned str '0.5', expected a number" in line for line in warned)
    # Every record's invariants (failed ones by their step), and results.json and the samples log
    # carry exactly the records' costs, failed samples' included.
    check_run(run, [task], 3)
    by_doc = sorted(run.records, key=lambda r: r["doc_id"])
    failed = [r for r in by_doc if r["error"]]
    assert [r["failed_step"] for r in failed] == ["locate", "locate"], [r["error"] for r in by_doc]
    assert sorted(r["error"] for r in failed) == [
        "LocatorError: locator 'moody' failed: ZeroDivisionError: division by zero",
        "LocatorError: locator 'moody' returned a map with 9 NaN and 0 infinite value(s) of 9"]
    for r in by_doc:  # the hostile scores are missing, never failing a sample; the built-ins are there
        assert "nan_score" not in r["scores"] and "text_score" not in r["scores"] and r["scores"]["max"] is not None
        assert r["bytes_global"] > 0 and r["flops"]["prefill"] > 0 and r["answer_stage1"] is not None
    nan_map = next(r for r in failed if "NaN" in r["error"])
    assert nan_map["flops"]["locate"] == 1000 and nan_map["bytes_total"] == nan_map["bytes_global"]
    (fine,) = [r for r in by_doc if not r["error"]]
    assert fine["flops"]["locate"] == 1000 and fine["bytes_local"] > 0 and fine["roi"] is not None

    run = Run(out, results_json(out), records(out / "records"))
    check_run(run, [task], 2)
    for r in run.records:
        assert r["error"] is None and r["roi"] == [0, 0, 20, 20] and r["roi_clipped_from"] == [-50, -50, 20, 20]
        assert r["flops"]["locate"] == 3
