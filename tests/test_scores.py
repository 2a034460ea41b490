"""Uncertainty scores as plug-ins (collab_eval.scores): each built-in on distributions whose
value is known in closed form, the order and completeness of what is recorded, a failing or
unknown score."""
import math

import pytest
import torch

from collab_eval import scores
from collab_eval.model_args import ModelArgError
from collab_eval.scores import ScoreError, StageOneAnswer

BUILTINS = ("max", "mean", "first", "margin", "nll", "shannon")


def answer(*steps, tokens=None) -> StageOneAnswer:
    """An answer whose steps have these probability distributions (logits = log p)."""
    return StageOneAnswer(torch.log(torch.tensor(steps, dtype=torch.float64)), tokens=tokens)


def builtin(name):
    return scores.installed().scores[name]


def test_the_builtins_are_installed_through_entry_points_in_recording_order():
    assert tuple(scores.installed().names()[:6]) == BUILTINS
    assert scores.installed().broken == {}


@pytest.mark.parametrize("k", [2, 5, 37])
def test_uniform_over_k_tokens(k):
    """Uniform: every min-entropy, Shannon entropy and NLL is ln k; the two best tokens tie (margin 0)."""
    a = answer([1 / k] * k, [1 / k] * k)
    values = scores.evaluate(a)
    for name in ("max", "mean", "first", "shannon", "nll"):
        assert values[name] == pytest.approx(math.log(k), abs=1e-6), name
    assert values["margin"] == pytest.approx(1.0, abs=1e-6)


def test_a_two_point_distribution():
    a = answer([0.7, 0.3, 0.0])
    assert builtin("margin")(a) == pytest.approx(1 - (0.7 - 0.3), abs=1e-6)
    assert builtin("max")(a) == pytest.approx(-math.log(0.7), abs=1e-6)
    assert builtin("shannon")(a) == pytest.approx(-(0.7 * math.log(0.7) + 0.3 * math.log(0.3)), abs=1e-6)
    assert builtin("nll")(a) == pytest.approx(-math.log(0.7), abs=1e-6)  # greedy: the argmax


def test_aggregation_over_tokens():
    """max / mean / first of the min-entropies; margin and shannon take the least certain token;
    nll averages -log p of the tokens actually generated."""
    steps = ([0.9, 0.1, 0.0, 0.0], [0.5, 0.3, 0.2, 0.0], [0.25, 0.25, 0.25, 0.25])
    a = answer(*steps)
    min_ent = [-math.log(max(p)) for p in steps]
    shannon = [-sum(x * math.log(x) for x in p if x > 0) for p in steps]
    got = scores.evaluate(a)
    assert got["max"] == pytest.approx(max(min_ent)) and got["first"] == pytest.approx(min_ent[0])
    assert got["mean"] == pytest.approx(sum(min_ent) / 3)
    assert got["margin"] == pytest.approx(max(1 - (0.9 - 0.1), 1 - (0.5 - 0.3), 1.0))
    assert got["shannon"] == pytest.approx(max(shannon))
    assert got["nll"] == pytest.approx(sum(min_ent) / 3)  # greedy: nll equals mean
    # Tokens not chosen greedily: -log p of those tokens.
    chosen = answer(*steps, tokens=(1, 2, 0))
    assert builtin("nll")(chosen) == pytest.approx(-(math.log(0.1) + math.log(0.2) + math.log(0.25)) / 3)


def test_an_empty_answer_is_maximally_uncertain_for_every_score():
    empty = StageOneAnswer(torch.zeros(0, 7))
    assert scores.evaluate(empty) == dict.fromkeys(scores.installed().names(), math.inf)


def test_a_failing_or_non_numeric_score_fails_the_sample_naming_the_score():
    a = answer([0.6, 0.4])
    with pytest.raises(ScoreError, match=r"score boom failed: ZeroDivisionError"):
        scores.evaluate(a, {"boom": lambda _: 1 / 0})
    with pytest.raises(ScoreError, match=r"score words returned str 'high', expected a number"):
        scores.evaluate(a, {"words": lambda _: "high"})
    with pytest.raises(ScoreError, match=r"score nan returned nan"):
        scores.evaluate(a, {"nan": lambda _: float("nan")})
    assert scores.evaluate(a, {"tensor": lambda ans: ans.log_probs[0, 0]}) == {"tensor": pytest.approx(math.log(0.6))}


def test_an_unknown_score_lists_the_installed_ones():
    with pytest.raises(ScoreError, match=r"score must be one of the installed scores \(max, mean, first, margin, nll, "
                                         r"shannon.*; entry-point group collab_eval.scores\), got 'median'"):
        scores.check_name("median")


def test_an_unknown_score_is_refused_before_the_model_loads(tmp_path):
    from model_adapters.llava import CollabLlava
    empty = tmp_path / "empty-checkpoint"
    empty.mkdir()
    with pytest.raises(ModelArgError, match=r"collab_llava: score must be one of the installed scores \(max, mean, "
                                            r"first, margin, nll, shannon.*got 'median'"):
        CollabLlava(pretrained=str(empty), records_dir=str(tmp_path / "records"), score="median")


def test_every_installed_score_is_recorded_and_the_gate_uses_the_chosen_one(tiny_server):
    from PIL import Image

    from collab_eval.edge import Codec
    from collab_eval.pipeline import Limits, Method
    from collab_eval.policy import Policy
    from tests.helpers import run_one
    image = Image.new("RGB", (64, 48), (200, 30, 30))
    method = Method(Policy("threshold", threshold=0.5), Codec.parse("png"), score="margin")
    out = run_one(tiny_server("llava"), [image], "What colour?", method=method, limits=Limits(4))
    assert list(out.scores) == scores.installed().names()
    assert out.score == out.scores["margin"] and 0.0 <= out.score <= 1.0
    assert out.retransmitted == (out.score > 0.5)
    assert out.scores["shannon"] == pytest.approx(max(out.shannon_entropy), rel=1e-6)
    assert out.scores["max"] == pytest.approx(max(out.min_entropy), rel=1e-6)
    assert out.scores["nll"] == pytest.approx(out.scores["mean"], rel=1e-5)  # greedy decoding


@pytest.mark.slow  # a second or more: the fast tier stays under a minute
def test_the_report_gives_every_recorded_score_its_auroc_and_gate(tmp_path):
    """Hand records of the POPE case (stage 1 right only on sample 0) with six scores recorded:
    ``margin`` ranks the three wrong answers above the right one (AUROC 1), ``max`` does for one
    of three pairs (0.5 and 1.0 are below the right answer's 2.0; the empty answer is +inf)."""
    from collab_eval import cli
    from collab_eval.analysis.runs import find_runs
    from collab_eval.analysis.summary import summarise
    from tests.report_records import POPE, pope_records, write_run
    records = pope_records()
    extra = {"margin": [0.1, 0.9, 0.8, 0.7], "nll": [0.2, 0.1, None, 0.3], "shannon": [1.0, 1.0, 1.0, 1.0],
             "zzz_plugin": [5.0, 6.0, 7.0, 4.0]}
    for i, r in enumerate(records):
        r["scores"] |= {name: values[i] for name, values in extra.items()}
    write_run(tmp_path / "run", records)
    f = summarise(find_runs(tmp_path / "run"), seeds=0).systems["hand-llava:png"].tasks[POPE].from_always
    assert f.auroc == {"max": pytest.approx(1 / 3), "mean": pytest.approx(1 / 3), "first": pytest.approx(1 / 3),
                       "margin": 1.0, "nll": pytest.approx(2 / 3), "shannon": 0.5, "zzz_plugin": pytest.approx(2 / 3)}
    assert list(f.curves.gated_other_scores) == ["mean", "first", "margin", "nll", "shannon", "zzz_plugin"]
    # margin's gate: τ=0.1 retransmits exactly the three wrong answers.
    assert [p.rate for p in f.curves.gated_other_scores["margin"] if p.tau == 0.1] == [0.75]
    assert cli.main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "report"), "--seeds", "0"]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert "### Uncertainty scores as gates" in text
    assert "| hand-llava | margin | 1.000 |" in text and "| hand-llava | max (the run's) | 0.333 |" in text
    assert (tmp_path / "report" / f"{POPE}_scores.png").stat().st_size > 0
