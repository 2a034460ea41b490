"""Latency under a link (docs/latency.md): specs, the definition on hand-computed records, a
hand-countable mahimahi trace with wrap-around, summary.json's latency fields against the formula
recomputed here, and calibrate --max-latency's guarantee on records built here."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from collab_eval.analysis import calibrate, curves, latency
from collab_eval.analysis.link import LinkError, Trace, parse_link
from collab_eval.analysis.runs import find_runs
from collab_eval.analysis.summary import Summary, summarise
from collab_eval.cli import main
from collab_eval.records import SampleRecord
from tests.report_records import pope_records, record, write_run

COLLAB_EVAL = str(Path(sys.executable).with_name("collab-eval"))
SECONDS = {"edge_global": 0.01, "stage1": 0.2, "roi": 0.05, "edge_local": 0.02, "stage2": 0.3, "total": 0.6}


def hand_record(**seconds) -> SampleRecord:
    """bytes: global 100, request 16, local 184 (report_records' layout for a 300-byte sample)."""
    r = record("t", 0, {"question": "q", "answer": "yes"}, "no", "yes", 1.0, 300, seconds={**SECONDS, **seconds})
    return SampleRecord.model_validate(r)


# ----- specs ---------------------------------------------------------------------------------
def test_constant_specs_parse_with_their_units():
    link = parse_link("1mbit@50ms")
    assert (link.up.bits_per_second, link.down.bits_per_second, link.rtt) == (1e6, 1e6, 0.05)
    link = parse_link("10mbit/50mbit@20ms")
    assert (link.up.bits_per_second, link.down.bits_per_second, link.rtt) == (1e7, 5e7, 0.02)
    link = parse_link("256kbit/1gbit@0.1s")
    assert (link.up.bits_per_second, link.down.bits_per_second, link.rtt) == (256e3, 1e9, 0.1)
    assert parse_link("2mbit").rtt == 0.0


@pytest.mark.parametrize("spec, message", [
    ("1mb@50ms", "'1mb' is not a rate"), ("1mbit@50", "'50' is not a round-trip time"),
    ("0mbit", "must be positive"), ("1mbit/2mbit/3mbit", "expected UP"), ("", "empty"),
    ("1mbit@-5ms", "is not a round-trip time"), ("trace:", "expected trace:UP_FILE"),
    ("trace:/no/such/trace", "cannot read the trace /no/such/trace")])
def test_bad_specs_say_what_is_wrong(spec, message):
    with pytest.raises(LinkError, match=message):
        parse_link(spec)


@pytest.mark.parametrize("text, message", [("", "is empty"), ("1\n3\nx\n", "line 3: 'x' is not a whole number"),
                                           ("5\n3\n", "line 2: 3 ms comes after 5 ms"), ("0\n0\n", "ends at 0 ms")])
def test_bad_traces_say_which_line(tmp_path, text, message):
    path = tmp_path / "up.trace"
    path.write_text(text)
    with pytest.raises(LinkError, match=message):
        parse_link(f"trace:{path}")


def test_the_cli_exits_2_on_a_bad_link(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["report", str(tmp_path), "--out", str(tmp_path / "r"), "--link", "fast"])
    assert exit_.value.code == 2
    assert "argument --link: --link 'fast': 'fast' is not a rate" in capsys.readouterr().err


# ----- the definition ------------------------------------------------------------------------
def test_latency_of_a_record_under_1mbit_50ms():
    r, link = hand_record(), parse_link("1mbit@50ms")
    # edge_global + (R/2 + 8*100/1e6) + stage1 + R/2
    stage1 = 0.01 + (0.025 + 0.0008) + 0.2 + 0.025
    assert latency.sample_latency(r, link, retransmitted=False) == pytest.approx(0.2608, abs=1e-12)
    # + roi + (R/2 + 8*16/1e6) + edge_local + (R/2 + 8*184/1e6) + stage2
    whole = stage1 + 0.05 + (0.025 + 0.000128) + 0.02 + (0.025 + 0.001472) + 0.3
    assert whole == pytest.approx(0.6824, abs=1e-12)
    assert latency.sample_latency(r, link, retransmitted=True) == pytest.approx(0.6824, abs=1e-12)


def test_latency_of_a_record_under_10mbit_up_50mbit_down_20ms():
    r, link = hand_record(), parse_link("10mbit/50mbit@20ms")
    assert latency.sample_latency(r, link, False) == pytest.approx(0.01 + 0.01 + 0.00008 + 0.2 + 0.01, abs=1e-12)
    # the request (16 bytes) goes down at 50 Mbit/s: 2.56 µs; the crop (184 bytes) up at 10 Mbit/s: 147.2 µs
    assert latency.sample_latency(r, link, True) == pytest.approx(0.62022976, abs=1e-12)


def test_server_seconds_from_flops_and_edge_seconds_scaled():
    r, link = hand_record(), parse_link("1mbit@50ms")  # FLOPs: stage 1 = 4+1+3+2 = 10, generic 0, stage2 20
    costs = latency.Costs(server_flops_per_second=100.0, edge_scale=3.0)
    # edge_global 0.03, stage1 10/100, answer's way back: the server's measured 0.2 s no longer counts
    assert latency.sample_latency(r, link, False, costs=costs) == pytest.approx(0.03 + 0.0258 + 0.1 + 0.025)
    assert latency.sample_latency(r, link, True, costs=costs) == pytest.approx(
        0.03 + 0.0258 + 0.1 + 0.0 + 0.025128 + 0.06 + 0.026472 + 0.2 + 0.025)


# ----- traces --------------------------------------------------------------------------------
TRACE = "1\n1\n3\n5\n"  # opportunities at 1, 1, 3 and 5 ms; then again at 6, 6, 8, 10, 11, 11, 13, 15, ...


def test_a_trace_transfer_counts_its_delivery_opportunities(tmp_path):
    (tmp_path / "up").write_text(TRACE)
    trace = parse_link(f"trace:{tmp_path / 'up'}").up
    assert isinstance(trace, Trace) and trace.period_ms == 5
    ms = lambda nbytes, start_ms: round(1000 * trace.transfer_seconds(nbytes, start_ms / 1000), 9)  # noqa: E731
    assert ms(0, 2) == 0  # nothing to send
    assert ms(1, 0) == 1 and ms(1500, 0) == 1 and ms(1501, 0) == 1  # two packets: both opportunities at 1 ms
    assert ms(4500, 0) == 3  # three packets: 1, 1, 3
    assert ms(1, 2) == 1  # from 2 ms the next one is at 3
    assert ms(1, 5) == 0  # an opportunity at the start counts
    assert ms(6000, 4) == 4  # 5, then wrapped around: 6, 6, 8
    assert ms(9 * 1500, 0) == 11  # 1, 1, 3, 5, 6, 6, 8, 10, 11
    assert ms(1, 12) == 1  # third pass: 13 ms
    assert ms(1, 10.1) == pytest.approx(0.9)


def test_samples_are_spread_over_the_trace_and_each_transfer_starts_when_it_is_sent(tmp_path):
    (tmp_path / "up").write_text(TRACE)
    link = parse_link(f"trace:{tmp_path / 'up'}")  # down: the same trace; RTT 0
    ms = {"edge_global": 0.001, "stage1": 0.002, "roi": 0.0005, "edge_local": 0.001, "stage2": 0.001}
    records = [hand_record(**ms), hand_record(**ms)]
    records[1].doc_id = 1
    lat = latency.Latencies.of(records, link)
    # sample 0 starts at 0: global image sent at 1 ms (opportunity at 1), stage 1 ends at 3 ms;
    # request down from 3.5 ms waits for 5 ms, crop up from 6 ms goes at 6 ms, stage 2 ends at 7 ms.
    # sample 1 starts at 2.5 ms (5 ms / 2 samples): sent at 3.5 -> 5 ms, stage 1 ends at 7 ms;
    # request from 7.5 -> 8 ms, crop from 9 -> 10 ms, stage 2 ends at 11 ms.
    assert np.round(1000 * lat.stage1, 9).tolist() == [3.0, 4.5]
    assert np.round(1000 * lat.whole, 9).tolist() == [7.0, 8.5]
    with_rtt = latency.Latencies.of(records, parse_link(f"trace:{tmp_path / 'up'}@4ms"))
    # sample 0: 1 ms edge, sent at 1 ms + 2 ms on the way, stage 1 to 5 ms, answer back at 7 ms
    assert round(1000 * with_rtt.stage1[0], 9) == 7.0


# ----- summary.json --------------------------------------------------------------------------
def timed_pope_records():
    rows = pope_records()
    for i, r in enumerate(rows):
        r["seconds"] = {"edge_global": 0.01 * (i + 1), "stage1": 0.2 + 0.01 * i, "roi": 0.05, "edge_local": 0.02,
                        "stage2": 0.3 + 0.02 * i, "total": 1.0}
        r["bytes_global"] = 1000 + 500 * i
        r["bytes_total"] = r["bytes_global"] + r["bytes_request"] + r["bytes_local"]
    return rows


def formula(r: dict, up: float, down: float, rtt: float, retransmitted: bool) -> float:
    """The issue's formula, written out again here."""
    s, half = r["seconds"], rtt / 2
    t = s["edge_global"] + (half + 8 * r["bytes_global"] / up) + s["stage1"] + half
    if retransmitted:
        t += s["roi"] + (half + 8 * r["bytes_request"] / down) + s["edge_local"] + (half + 8 * r["bytes_local"] / up) \
            + s["stage2"]
    return t


def test_summary_latency_fields_equal_the_formula_recomputed_from_the_records(tmp_path):
    rows = timed_pope_records()
    summary = summarise(find_runs(write_run(tmp_path / "run", rows)), seeds=0)
    latency.annotate(summary, [parse_link("1mbit@50ms"), parse_link("10mbit/50mbit@20ms")])
    path = tmp_path / "summary.json"
    summary.write(path)
    data = json.loads(path.read_text())["systems"]["hand-llava:png"]["tasks"]["collab_pope_mini"]
    assert Summary.read(path).systems["hand-llava:png"].tasks["collab_pope_mini"].latency["1mbit@50ms"].n == 4
    for spec, (up, down, rtt) in {"1mbit@50ms": (1e6, 1e6, 0.05), "10mbit/50mbit@20ms": (1e7, 5e7, 0.02)}.items():
        entry = data["latency"][spec]
        for end, retransmitted in (("never", False), ("always", True)):
            each = [formula(r, up, down, rtt, retransmitted) for r in rows]
            assert entry[end]["mean"] == pytest.approx(sum(each) / 4, abs=1e-12)
            assert entry[end]["p95"] == pytest.approx(np.percentile(each, 95), abs=1e-12)
        # The gated curve: retransmit iff score > tau (null score: +inf), as for bytes.
        scores = [math.inf if r["score"] is None else r["score"] for r in rows]
        assert len(entry["gated"]) == len(data["curves"]["gated"])
        for point, by_bytes in zip(entry["gated"], data["curves"]["gated"]):
            tau = float(point["tau"])
            each = [formula(r, up, down, rtt, s > tau) for r, s in zip(rows, scores)]
            assert point["mean"] == pytest.approx(sum(each) / 4, abs=1e-12)
            assert point["p95"] == pytest.approx(np.percentile(each, 95), abs=1e-12)
            assert (point["accuracy"], point["rate"], point["tau"]) == (by_bytes["accuracy"], by_bytes["rate"],
                                                                      by_bytes["tau"])


# ----- calibrate --max-latency -----------------------------------------------------------------
def population(n: int = 400, seed: int = 0):
    """n images, one question each: stage 1 takes 0.3-0.5 s, retransmitting 0.6-1.0 s more; the
    score is informative (stage 2 helps where it is high)."""
    rng = np.random.default_rng(seed)
    score = rng.uniform(0, 3, n)
    acc1 = (rng.uniform(size=n) > score / 3).astype(float)
    acc2 = np.maximum(acc1, (rng.uniform(size=n) < 0.9).astype(float))
    samples = curves.Samples.build(acc1, acc2, score, np.full(n, 100), np.full(n, 300), np.full(n, 10), np.full(n, 30),
                                   keys=[f"t/{i}" for i in range(n)])
    stage1 = rng.uniform(0.3, 0.5, n)
    lat = latency.Latencies(stage1, stage1 + rng.uniform(0.6, 1.0, n))
    return samples, lat, [f"img{i}" for i in range(n)]


@pytest.mark.parametrize("stat, limit", [("mean", 0.75), ("p95", 1.0)])
def test_calibrate_max_latency_keeps_its_guarantee(stat, limit):
    """Over 40 splits the chosen tau's latency on the whole population (what new images would see)
    exceeds the limit at most about delta of the time, and each split reports its held-out latency."""
    samples, lat, names = population()
    target = calibrate.Target("latency", limit, 0.1, stat=stat)
    violations, feasible = 0, 0
    for seed in range(40):
        c = calibrate.calibrate(samples, names, target, calib_fraction=0.5, seed=seed, latency=lat, link="hand")
        each = lat.of_gate(samples.score > c.tau)
        true = each.mean() if stat == "mean" else (each > limit).mean()  # p95: the fraction over the limit
        violations += true > (limit if stat == "mean" else calibrate.TAIL)
        feasible += c.feasible
        assert c.test.latency is not None and c.test.latency.link == "hand"
        assert c.test.latency.never_mean <= c.test.latency.mean <= c.test.latency.always_mean
        held_out = ~calibrate.split_by_image(names, 0.5, np.random.default_rng(seed))  # calibrate's own split
        assert c.test.latency.mean == pytest.approx(float(each[held_out].mean()), abs=1e-12)
        assert c.test.latency.p95 == pytest.approx(float(np.percentile(each[held_out], 95)), abs=1e-12)
    assert feasible >= 30  # the limit is reachable: most splits find a threshold
    assert violations <= 8  # delta = 0.1 of 40 is 4; binomial slack


def test_calibrate_max_latency_below_never_falls_back_to_never():
    samples, lat, names = population(100)
    c = calibrate.calibrate(samples, names, calibrate.Target("latency", 0.2, 0.1), calib_fraction=0.5, seed=0,
                            latency=lat, link="hand")
    assert (c.feasible, c.tau) == (False, math.inf)
    assert c.test.latency.mean == c.test.latency.never_mean


def test_calibrate_command_with_max_latency(tmp_path, capsys):
    rows = timed_pope_records()
    run = write_run(tmp_path / "run", rows)
    assert main(["calibrate", str(run), "--task", "collab_pope_mini", "--max-latency", "10", "--link", "1mbit@50ms",
                 "--calib-fraction", "0.5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["target"], out["link"], out["latency_stat"]) == ("max-latency", "1mbit@50ms", "mean")
    assert out["test"]["latency"]["always_mean"] >= out["test"]["latency"]["never_mean"] > 0
    assert main(["calibrate", str(run), "--task", "collab_pope_mini", "--max-latency", "1"]) == 2
    assert "--max-latency needs --link" in capsys.readouterr().err
    with pytest.raises(ValueError, match="use collab-eval calibrate --max-latency"):
        calibrate.parse_spec("max-latency=0.5")


@pytest.mark.slow
def test_report_command_with_two_links_writes_tables_figures_and_summary(tmp_path):
    run = write_run(tmp_path / "run", timed_pope_records())
    result = subprocess.run([COLLAB_EVAL, "report", str(run), "--out", str(tmp_path / "report"), "--seeds", "2",
                             "--link", "1mbit@50ms", "--link", "10mbit/50mbit@20ms"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    latency_headline = result.stdout.split("\n\n")[-1].splitlines()
    assert latency_headline[0].split()[:3] == ["task", "system", "link"] and len(latency_headline) == 2 + 2
    md = (tmp_path / "report" / "report.md").read_text()
    assert "### Latency under 1mbit@50ms" in md and "### Latency under 10mbit/50mbit@20ms" in md
    assert (tmp_path / "report" / "collab_pope_mini_latency_0.png").stat().st_size > 10_000
    rows = timed_pope_records()
    entry = json.loads((tmp_path / "report" / "summary.json").read_text())["systems"]["hand-llava:png"]["tasks"][
        "collab_pope_mini"]["latency"]["1mbit@50ms"]
    assert entry["always"]["mean"] == pytest.approx(sum(formula(r, 1e6, 1e6, 0.05, True) for r in rows) / 4)


# ----- every cost on the clock: each locator's passes and highres tiles --------------------------
@pytest.mark.parametrize("locator", ["rel_att", "grad_att", "pure_grad", "center"])
def test_latency_from_flops_counts_the_locators_own_passes(tiny_server, locator):
    """A real sample per locator: with --server-flops-per-second the RoI step takes
    (locate + generic) / F, so a gradient locator's forward and backward passes are on the clock."""
    from PIL import Image

    from collab_eval.edge import Codec
    from collab_eval.pipeline import Limits, Method
    from collab_eval.policy import Policy
    from tests.helpers import run_one
    server = tiny_server("llava")
    picture = Image.fromarray(np.random.default_rng(5).integers(0, 256, (120, 200, 3), dtype=np.uint8))
    how = Method(Policy("always", -math.inf), Codec.parse("png"), locator=locator)
    out = run_one(server, [picture], "what is on the sign ?", method=how, limits=Limits(max_new_tokens=2))
    r = SampleRecord(run_id="r", task="t", doc_id=0, question="q", model="m", codec="png", policy="always",
                     **vars(out))
    rate, link = 1e9, parse_link("1mbit@50ms")
    roi_flops = out.flops["locate"] + out.flops["generic"]
    if locator in ("grad_att", "pure_grad"):
        assert out.flops["locate"] > 0 and out.flops["generic"] == 0
    seconds = latency.step_seconds(r, latency.Costs(server_flops_per_second=rate))
    assert seconds["roi"] == roi_flops / rate
    stage1 = sum(out.flops[p] for p in ("vision", "projector", "prefill", "decode")) / rate
    expected = (r.seconds["edge_global"] + 0.025 + 8 * r.bytes_global / 1e6 + stage1
                + roi_flops / rate + 0.025 + 8 * r.bytes_request / 1e6 + r.seconds["edge_local"]
                + 0.025 + 8 * r.bytes_local / 1e6 + out.flops["stage2"] / rate + 0.025)
    assert latency.sample_latency(r, link, True, costs=latency.Costs(server_flops_per_second=rate)) == \
        pytest.approx(expected, rel=1e-12)


def test_latency_counts_the_upload_of_highres_tiles(tiny_server):
    """highres=true on an original over 1024 px: the edge's tiles go up the link (after the
    server's ask), so a retransmitted sample waits for them; stage 1 alone does not."""
    from PIL import Image

    from collab_eval.edge import Codec
    from collab_eval.pipeline import Limits, Method
    from collab_eval.policy import Policy
    from tests.helpers import run_one
    server = tiny_server("llava")
    large = Image.fromarray(np.random.default_rng(6).integers(0, 256, (600, 1500, 3), dtype=np.uint8))
    how = Method(Policy("always", -math.inf), Codec.parse("png"), locator="grad_att", highres=True)
    out = run_one(server, [large], "what is on the sign ?", method=how, limits=Limits(max_new_tokens=2))
    assert out.bytes_tiles > 0
    r = SampleRecord(run_id="r", task="t", doc_id=0, question="q", model="m", codec="png", policy="always",
                     **vars(out))
    without = r.model_copy(update={"bytes_tiles": 0})
    link = parse_link("1mbit@50ms")
    # R/2 for the ask, R/2 + 8 * bytes_tiles / U for the upload
    assert latency.sample_latency(r, link, True) - latency.sample_latency(without, link, True) == \
        pytest.approx(0.025 + 0.025 + 8 * out.bytes_tiles / 1e6, rel=1e-9)
    assert latency.sample_latency(r, link, False) == latency.sample_latency(without, link, False)


# ----- the small cases: each bad value gets its own message, nothing is ignored -----------------
def test_a_negative_or_overflowing_rate_says_so(capsys):
    with pytest.raises(LinkError, match="the rate '-1mbit' must be positive"):
        parse_link("-1mbit@50ms")
    with pytest.raises(LinkError, match="the rate '1e309mbit' is not finite"):
        parse_link("1e309mbit")
    # On the command line too: argparse would take "-1mbit@50ms" for an option and say it is missing.
    with pytest.raises(SystemExit) as exit_:
        main(["report", "somewhere", "--out", "r", "--link", "-1mbit@50ms"])
    assert exit_.value.code == 2
    assert "--link '-1mbit@50ms': the rate '-1mbit' must be positive" in capsys.readouterr().err


@pytest.mark.parametrize("text, message", [
    ("1\n" + "9" * 23 + "\n", "line 2: 99999999999999999999999 ms is too large"),
    ("1\n\n3\n", "line 2 is empty"), ("1\n   \n3\n", "line 2 is empty"),
    ("1\n\u0663\n", "line 2: '\u0663' is not a whole")])
def test_a_trace_line_too_large_blank_or_not_ascii_stops_naming_the_line(tmp_path, text, message):
    path = tmp_path / "up.trace"
    path.write_text(text)
    with pytest.raises(LinkError, match=message):
        parse_link(f"trace:{path}")


def test_timing_options_without_a_link_and_a_negative_max_latency_are_refused(tmp_path, capsys):
    run = write_run(tmp_path / "run", pope_records())
    assert main(["report", str(run), "--out", str(tmp_path / "r"), "--seeds", "0", "--edge-scale", "3"]) == 2
    assert "--edge-scale time a sample's steps for the latency under --link" in capsys.readouterr().err
    assert main(["report", str(run), "--out", str(tmp_path / "r"), "--seeds", "0",
                 "--server-flops-per-second", "1e12"]) == 2
    assert "--server-flops-per-second time" in capsys.readouterr().err
    assert main(["calibrate", str(run), "--task", "collab_pope_mini", "--max-latency", "-1",
                 "--link", "1mbit@50ms"]) == 2
    assert "--max-latency must be a positive number of seconds, got -1" in capsys.readouterr().err
