"""A user's own uncertainty score, as a user adds it: a distribution built on the fly (a module
and its ``*.dist-info/entry_points.txt`` under the entry-point group ``collab_eval.scores``, on
PYTHONPATH), chosen by name in lmms-eval's --model_args, gating a threshold run."""
import pytest

from tests.helpers import evaluate

PLUGIN = '''
def tokens_plus_first(answer):
    """The number of generated tokens plus the first token's min-entropy (nats)."""
    return answer.logits.shape[0] + answer.min_entropy[0]
'''


def plugin_distribution(site):
    site.mkdir()
    (site / "my_scores.py").write_text(PLUGIN)
    info = site / "my_scores-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-scores\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[collab_eval.scores]\nmyscore = my_scores:tokens_plus_first\n")
    return site


@pytest.mark.slow
def test_a_score_plugin_gates_a_threshold_run_through_lmms_eval(tiny_llava_path, tmp_path, monkeypatch):
    site = plugin_distribution(tmp_path / "site")
    monkeypatch.setenv("PYTHONPATH", str(site))
    tau = 3.5
    run = evaluate("collab_llava", f"pretrained={tiny_llava_path},policy=threshold,threshold={tau},score=myscore,"
                   f"records_dir={tmp_path / 'out' / 'records'}", "collab_pope_mini", tmp_path / "out",
                   extra=("--limit", "2"))
    assert len(run.records) == 2
    for r in run.records:
        by_hand = len(r["min_entropy"]) + r["min_entropy"][0]
        assert r["score_name"] == "myscore" and r["settings"]["score"] == "myscore"
        assert r["scores"]["myscore"] == pytest.approx(by_hand, rel=1e-6) and r["score"] == r["scores"]["myscore"]
        assert r["retransmitted"] == (by_hand > tau)
        assert list(r["scores"])[:6] == ["max", "mean", "first", "margin", "nll", "shannon"]  # built-ins too
