"""The trade-off figure reads at a glance when systems differ: log cost axis over a wide range,
no zoom that turns one sample into a cliff, GFLOPs, and a colour per system name."""
import hashlib

import pytest

from collab_eval.analysis import plots
from collab_eval.analysis.runs import find_runs
from collab_eval.analysis.summary import summarise
from tests.report_records import POPE, POPE_CASE, pope_records, write_run


def test_colours_come_from_the_name_and_stay_distinct():
    name = "smalldetail-llava:png"
    own = plots.PALETTE[int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") % len(plots.PALETTE)]
    assert plots.colours([name]) == {name: own}
    others = [n for n in ("Qwen2-VL-7B-Instruct:jpeg:90", "llava-1.5-7b-hf:png", "tiny-qwen2-vl:png")
              if plots.colours([n])[n] != own]
    assert plots.colours([name, *others])[name] == own  # the same beside other systems
    many = [f"system-{i}" for i in range(len(plots.PALETTE))]
    assert len(set(plots.colours(many).values())) == len(plots.PALETTE)  # collisions move to a free colour


def test_accuracy_axis_spans_at_least_ten_points():
    lo, hi = plots.accuracy_limits([0.4933, 0.5])  # one sample of 150 apart
    assert hi - lo >= 0.10 and lo < 0.4933 and hi > 0.5
    assert plots.accuracy_limits([0.99, 1.0]) == pytest.approx((0.895, 1.005))  # kept inside [0, 1] plus margin
    assert plots.accuracy_limits([0.2, 0.8]) == pytest.approx((0.17, 0.83))  # wide data: its range plus margin


def test_log_cost_axis_only_for_a_wide_range():
    assert plots.log_scale([7_000, 15_000, 36_000, 69_000])  # llava and qwen on one axis
    assert not plots.log_scale([7_000, 15_000])  # one system


def test_figure_with_two_systems_of_different_cost(tmp_path):
    small = pope_records(model="/ckpt/small-llava")
    big = pope_records([(t, s1, s2, sc, 10 * b) for t, s1, s2, sc, b in POPE_CASE], model="/ckpt/big-qwen",
                       bytes_global=1000)
    write_run(tmp_path / "small", small, name="collab_llava-20260101T000000")
    write_run(tmp_path / "big", big, name="collab_qwen2_vl-20260101T000000")
    summary = summarise(find_runs(tmp_path / "small") + find_runs(tmp_path / "big"), seeds=0)
    entries = {name: s.tasks[POPE] for name, s in summary.systems.items()}
    fig = plots.tradeoff_figure(POPE, entries)
    bytes_ax, flops_ax = fig.axes[:2]
    assert bytes_ax.get_xscale() == "log" and "log scale" in bytes_ax.get_xlabel()  # 100 to 3,000 bytes
    assert flops_ax.get_xscale() == "linear" and "GFLOPs" in flops_ax.get_xlabel()
    always_flops = entries["small-llava:png"].from_always.always.flops
    assert max(max(line.get_xdata()) for line in flops_ax.get_lines()) == pytest.approx(always_flops * 1e-9)
    lo, hi = bytes_ax.get_ylim()
    assert hi - lo >= 0.10
    colour = plots.colours(entries)
    gate_lines = {line.get_label().split(":")[0] + ":png": line.get_color() for line in bytes_ax.get_lines()
                  if "entropy gate" in line.get_label()}
    assert gate_lines == colour and len(set(colour.values())) == 2
