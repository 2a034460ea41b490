"""Bad input by the thousand (hypothesis): the parsers and readers of --link specs, mahimahi
traces, model args and records lines either give a value that is right or refuse with their own
error naming the input, never another exception and never a silently wrong value.

Examples per test by the hypothesis profile (tests/conftest.py): 40 in the fast tier (the
default), 200 in CI (``HYPOTHESIS_PROFILE=ci``, .ci/run); ``HYPOTHESIS_PROFILE=thousands`` runs
5,000 each (docs/development.md). ``--hypothesis-show-statistics`` prints how many each tried."""
import json
import math
import re

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from collab_eval import model_args
from collab_eval.analysis.link import MAX_TIMESTAMP_MS, ConstantRate, LinkError, Trace, parse_link
from collab_eval.records import BYTE_PARTS, RecordError, SampleRecord, parse_record, read_record_file
from tests.report_records import pope_records

RATE_UNITS = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
TIME_UNITS = {"ms": 1e-3, "s": 1.0}
PIECES = ["0", "1", "5", "9", ".", "e", "E", "-", "+", "kbit", "mbit", "gbit", "Mbit", "ms", "s", "/", "@", " ",
          "trace:", ",", "inf", "nan", "1e309", "\u0663", "\t"]


# ----- --link specs -------------------------------------------------------------------------------
def check_link(spec: str):
    try:
        link = parse_link(spec)
    except LinkError as err:
        assert str(err).startswith(f"--link {spec!r}: "), str(err)
        return None
    assert isinstance(link.up, ConstantRate) and isinstance(link.down, ConstantRate)
    for rate in (link.up.bits_per_second, link.down.bits_per_second):
        assert math.isfinite(rate) and rate > 0
    assert math.isfinite(link.rtt) and link.rtt >= 0
    return link


@given(st.lists(st.sampled_from(PIECES), max_size=12).map("".join))
def test_any_spec_made_of_spec_pieces_is_a_valid_link_or_refused_by_name(spec):
    check_link(spec)


@given(st.text(max_size=30))
def test_any_text_is_a_valid_link_or_refused_by_name(spec):
    assume(not spec.lower().lstrip().startswith("trace:"))  # a trace spec reads files: below
    check_link(spec)


NUMBERS = st.one_of(st.integers(-10, 10 ** 6).map(str),
                    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6).map(repr),
                    st.sampled_from(["1e3", ".5", "2.", "1e-3", "1e308", "1e309", "-0"]))


@given(NUMBERS, st.sampled_from(sorted(RATE_UNITS)), st.one_of(st.none(), st.tuples(NUMBERS, st.sampled_from(
    sorted(RATE_UNITS)))), st.one_of(st.none(), st.tuples(NUMBERS, st.sampled_from(sorted(TIME_UNITS)))))
def test_a_well_formed_spec_means_exactly_its_numbers(up, unit, down, rtt):
    spec = f"{up}{unit}" + (f"/{down[0]}{down[1]}" if down else "") + (f"@{rtt[0]}{rtt[1]}" if rtt else "")
    link = check_link(spec)
    up_value = float(up) * RATE_UNITS[unit]
    down_value = float(down[0]) * RATE_UNITS[down[1]] if down else up_value
    rtt_value = float(rtt[0]) * TIME_UNITS[rtt[1]] if rtt else 0.0
    valid = all(math.isfinite(v) and v > 0 for v in (up_value, down_value)) and (
        math.isfinite(rtt_value) and rtt_value >= 0 and not (rtt and rtt[0].startswith("-")))
    if not valid:
        assert link is None, spec
        return
    assert link is not None, spec
    assert (link.up.bits_per_second, link.down.bits_per_second, link.rtt) == (up_value, down_value, rtt_value)


# ----- mahimahi traces ----------------------------------------------------------------------------
LINES = st.one_of(st.integers(0, 50).map(str), st.integers(-5, 10 ** 25).map(str), st.just(""), st.just("  "),
                  st.text(max_size=4))


def reference_seconds(times: tuple[int, ...], nbytes: int, start: float) -> float:
    """The docs' rule by enumeration: the ceil(n/1500)-th opportunity at or after ``start`` (the
    trace repeating with the period of its last timestamp), minus ``start``."""
    if nbytes <= 0:
        return 0.0
    need, period, k = math.ceil(nbytes / 1500), times[-1], 0
    start_ms = start * 1000
    while True:
        for t in times:
            at = k * period + t
            if at >= start_ms:
                need -= 1
                if need == 0:
                    return (at - start_ms) / 1000
        k += 1


@given(st.lists(LINES, max_size=8), st.integers(0, 20_000), st.floats(0, 0.2))
def test_any_trace_file_is_a_valid_trace_or_refused_naming_the_line(tmp_path_factory, lines, nbytes, start):
    path = tmp_path_factory.mktemp("trace") / "up.trace"
    path.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
    try:
        link = parse_link(f"trace:{path}@10ms")
    except LinkError as err:
        assert str(err).startswith(f"--link 'trace:{path}@10ms': ") and str(path) in str(err), str(err)
        named = re.search(r" line (\d+)", str(err))
        if named:  # the line named is one of the file's, and the first that is wrong is no later
            bad = [i for i, line in enumerate(lines, 1) if not re.fullmatch(r"[0-9]+", line.strip())]
            assert 1 <= int(named[1]) <= len(lines) and (not bad or int(named[1]) <= bad[0]), (lines, str(err))
        return
    trace = link.up
    assert isinstance(trace, Trace)
    assert all(re.fullmatch(r"[0-9]+", line.strip()) for line in lines)
    times = tuple(int(line) for line in lines)
    assert trace.opportunities_ms == times and list(times) == sorted(times) and 0 < times[-1] <= MAX_TIMESTAMP_MS
    seconds = trace.transfer_seconds(nbytes, start)
    assume(times[-1] <= 1000 and len(times) * 20 >= nbytes / 1500 / 10)  # the enumeration stays small
    assert seconds == pytest.approx(reference_seconds(times, nbytes, start), abs=1e-9)


# ----- model args ---------------------------------------------------------------------------------
VALUES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
                   st.sampled_from(["inf", "-inf", "nan", "1e309", "true", "yes", "0", "1.5", "7.0", " 3", "3 "]))


def refused(err: model_args.ModelArgError, name: str, value) -> None:
    assert str(err).startswith(f"{name}") and repr(value) in str(err) or str(value) in str(err), str(err)


@given(VALUES)
def test_number_is_a_finite_float_or_refused(value):
    try:
        x = model_args.number("threshold", value)
    except model_args.ModelArgError as err:
        refused(err, "threshold", value)
        return
    assert isinstance(x, float) and math.isfinite(x) and x == float(value)


@given(VALUES, st.one_of(st.none(), st.integers(-3, 3)))
def test_integer_is_a_whole_number_at_least_its_minimum_or_refused(value, minimum):
    try:
        x = model_args.integer("seed", value, minimum=minimum)
    except model_args.ModelArgError as err:
        refused(err, "seed", value)
        return
    assert type(x) is int and not isinstance(value, bool) and x == float(value)
    assert minimum is None or x >= minimum


@given(VALUES)
def test_boolean_is_only_what_says_true_or_false(value):
    try:
        x = model_args.boolean("resume", value)
    except model_args.ModelArgError as err:
        refused(err, "resume", value)
        return
    truthy = {"true", "1", "yes"}
    assert x is (value if isinstance(value, bool) else str(value).lower() in truthy)
    assert isinstance(value, bool) or str(value).lower() in truthy | {"false", "0", "no"}


@given(VALUES)
def test_a_run_id_is_a_safe_file_name_or_refused(value):
    try:
        x = model_args.run_id("run_id", value)
    except model_args.ModelArgError as err:
        refused(err, "run_id", value)
        return
    if x is not None:
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", x) and "/" not in x and ".rank" not in x


@given(st.text(alphabet="abcpolicythresold=,.0123456789-\"[]{}: inf", max_size=40))
def test_lmms_evals_parse_then_our_checks_never_crash(text):
    """What lmms-eval's own parser makes of a model_args string, through each arg's check."""
    from lmms_eval.utils import simple_parse_args_string
    try:
        parsed = simple_parse_args_string(text)
    except (ValueError, SyntaxError, TypeError, IndexError):
        return  # lmms-eval refuses it before any collab code runs
    checks = (lambda k, v: model_args.number(k, v, infinite_ok=True), model_args.integer, model_args.boolean,
              model_args.run_id)
    for key, value in parsed.items():
        for check in checks:
            try:
                check(key, value)
            except model_args.ModelArgError as err:
                assert str(err).startswith(str(key)), str(err)


# ----- records lines ------------------------------------------------------------------------------
JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-10 ** 15, 10 ** 15),
                              st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=5)),
                    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner,
                                                                                          max_size=3)),
                    max_leaves=6)
FIELDS = sorted(SampleRecord.model_fields)
COST_FIELDS = ["bytes_global", "bytes_request", "bytes_local", "bytes_tiles", "bytes_total", "bytes_original",
               "flops_total"]


def accepted_is_possible(record: SampleRecord) -> None:
    for field in COST_FIELDS:
        assert getattr(record, field) >= 0, field
    assert all(v >= 0 for v in record.flops.values())
    assert all(math.isfinite(v) and v >= 0 for v in record.seconds.values())
    assert record.flops_total == sum(record.flops.values())
    if set(BYTE_PARTS) <= record.model_fields_set:
        assert record.bytes_total == sum(getattr(record, f) for f in BYTE_PARTS)


def base_record() -> dict:
    record = pope_records()[1]
    record["seconds"] = {"edge_global": 0.01, "stage1": 0.2, "total": 0.25}
    return record


@given(st.sampled_from(FIELDS + ["seconds.stage1", "flops.decode", "flops.generic", "seconds.total"]), JSON)
def test_a_record_with_any_one_field_changed_is_read_right_or_refused(field, value):
    record = base_record()
    if "." in field:
        outer, inner = field.split(".")
        record[outer] = {**record[outer], inner: value}
    else:
        record[field] = value
    line = json.dumps(record)
    parsed, problem = parse_record(line)
    assert (parsed is None) != (problem is None)
    if parsed is not None:
        accepted_is_possible(parsed)
        assert json.loads(parsed.to_json())["doc_id"] == parsed.doc_id  # it writes back
    else:
        assert isinstance(problem, str) and problem


@given(st.sampled_from(COST_FIELDS + ["seconds.stage1", "flops.vision"]),
       st.one_of(st.integers(-10 ** 18, 10 ** 18), st.floats(), st.sampled_from([1e309, -1e309])))
def test_a_cost_that_is_impossible_is_always_refused_naming_it(field, value):
    record = base_record()
    if "." in field:
        outer, inner = field.split(".")
        record[outer] = {**record[outer], inner: value}
    else:
        record[field] = value
    line = json.dumps(record, allow_nan=True)
    parsed, problem = parse_record(line)
    if parsed is not None:
        accepted_is_possible(parsed)  # only a value that keeps the record possible gets through
    else:
        name = field.split(".")[0]
        assert name in problem or "not valid JSON" in problem, problem


@given(st.integers(0, 2000), st.integers(0, 4))
def test_a_records_file_cut_anywhere_reads_its_complete_lines_or_names_the_line(tmp_path_factory, cut, which):
    lines = [json.dumps(r) + "\n" for r in pope_records()]
    text = "".join(lines)
    path = tmp_path_factory.mktemp("records") / "run.rank0.jsonl"
    damaged = text[:cut] + text[cut + which:]  # cut off at ``cut``, or ``which`` characters lost in the middle
    path.write_text(damaged if which else text[:cut], encoding="utf-8")
    try:
        read = read_record_file(path)
    except RecordError as err:
        assert str(err).startswith(f"{path}, line ") or str(err).startswith(f"{path}: "), str(err)
        return
    for record in read.records:
        accepted_is_possible(record)
    assert len(read.records) <= len(lines)
