"""A user's locator, installed as its own distribution, chosen by name through lmms-eval's
command line (docs/locators.md, "Writing a locator")."""
import os
import textwrap

import pytest

from tests.helpers import check_record, evaluate

PLUGIN = '''
from collab_eval.locators import Located


class TopLeft:
    """Always the top-left 10 x 10 pixels of the first image, at a made-up cost."""
    kind = "box"

    def locate(self, ask):
        return Located(0, box=(0, 0, 10, 10), flops={"locate": 7})
'''


@pytest.fixture
def plugin_on_path(tmp_path, monkeypatch):
    """A distribution built by hand, as pip would install it: the module and its
    dist-info with the entry point, on PYTHONPATH of the lmms-eval subprocess."""
    site = tmp_path / "site"
    (site / "corner_locator-0.1.dist-info").mkdir(parents=True)
    (site / "corner_locator.py").write_text(textwrap.dedent(PLUGIN))
    (site / "corner_locator-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: corner-locator\nVersion: 0.1\n")
    (site / "corner_locator-0.1.dist-info" / "entry_points.txt").write_text(
        "[collab_eval.locators]\ntop_left = corner_locator:TopLeft\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    return site


@pytest.mark.slow
def test_a_plugin_locator_runs_through_the_lmms_eval_command_line(plugin_on_path, tiny_llava_path, tmp_path):
    run = evaluate("collab_llava", f"pretrained={tiny_llava_path},policy=always,locator=top_left,"
                   f"records_dir={tmp_path / 'records'}", "collab_textvqa_mini", tmp_path,
                   extra=("--limit", "2"))
    assert len(run.records) == 2
    for r in run.records:
        check_record(r)
        assert r["roi"] == [0, 0, 10, 10] and r["roi_image"] == 0
        assert r["flops"]["locate"] == 7
        assert r["settings"]["locator"] == "top_left" and r["settings"]["highres"] is False
