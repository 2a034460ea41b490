"""Study files tried by the thousand (hypothesis): whatever a study file holds, loading it either
gives a study whose every cell lmms-eval reads back exactly as declared (the same model args,
no other, each value the text given; the folder inside cells/), or one StudyError naming the
file; never another exception, never a cell that runs something else than its name says.

Generated inputs per run, in CI (``HYPOTHESIS_PROFILE=ci``): 300 hostile and 200 plain model/policy
argument sets, 200 study documents, 200 raw texts; in the fast tier (the default profile) a fifth
of each (tests/conftest.py)."""
from __future__ import annotations

import string
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lmms_eval.utils import _smart_comma_split, simple_parse_args_string

from collab_eval import study
from tests.helpers import property_examples

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
BASE = {"name": "p", "models": [{"name": "m", "adapter": "collab_llava", "checkpoint": "smalldetail-llava"}],
        "task_sets": [{"name": "t", "tasks": ["smalldetail_read"]}], "policies": ["always"], "codecs": ["png"]}

# Keys: mostly plausible names, sometimes anything; values: text with the characters that matter
# to lmms-eval's parser (, = " ' { } [ ] \ / . and blanks) as likely as letters, numbers, booleans.
KEYS = st.one_of(st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True), st.text(max_size=6))
TEXT = st.text(alphabet=st.sampled_from(list(string.ascii_letters[:6] + string.digits[:4] + ',="\'{}[]\\/. -_:\n')),
               max_size=12)
VALUES = st.one_of(TEXT, st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True), st.booleans())
ARGS = st.dictionaries(KEYS, VALUES, max_size=4)


def load(tmp_path: Path, data) -> study.Study | None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    try:
        return study.load_study(path)
    except study.StudyError as err:
        assert str(err).startswith(f"{path}: "), err
        return None


def as_lmms_eval_reads(argument: str) -> dict[str, str]:
    """--model_args as lmms-eval splits it: each key and the text of its value."""
    return dict(item.split("=", 1) for item in _smart_comma_split(argument))


@settings(max_examples=property_examples(300), **SETTINGS)
@given(model_args=ARGS, policy_args=ARGS, policy=st.sampled_from(["random", "always", "threshold"]))
def test_every_accepted_cell_runs_exactly_what_it_declares(tmp_path, model_args, policy, policy_args):
    data = BASE | {"models": [BASE["models"][0] | {"model_args": model_args}],
                   "policies": [{"policy": policy, "args": policy_args}]}
    spec = load(tmp_path, data)
    if spec is None:
        return
    check_cell(spec, tmp_path, policy, model_args, policy_args)


def check_cell(spec, tmp_path, policy, model_args, policy_args):
    out = tmp_path / "out"
    (cell,) = study.cells(spec, out)
    assert (out / "cells").resolve() in cell.folder.resolve().parents
    assert cell.folder.name == cell.policy.name and "/" not in cell.policy.name
    for resume in (False, True):
        argument = study.model_args(cell, resume)
        read = as_lmms_eval_reads(argument)
        declared = {"pretrained": "smalldetail-llava", "policy": policy, "codec": "png",
                    "records_dir": str(cell.records_dir)}
        declared |= {k: study.arg_text(v) for k, v in {**policy_args, **model_args}.items()}
        if resume:
            declared["resume"] = "true"
        assert read == declared
        assert set(simple_parse_args_string(argument)) == set(declared)


DOCUMENT = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
                        lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                        max_leaves=12)
FIELDS = st.sampled_from(["name", "models", "task_sets", "policies", "codecs", "lmms_eval_args", "slurm",
                          "description"])


@settings(max_examples=property_examples(200), **SETTINGS)
@given(changes=st.dictionaries(FIELDS, DOCUMENT, max_size=3))
def test_any_study_document_loads_or_is_refused_naming_the_file(tmp_path, changes):
    spec = load(tmp_path, BASE | changes)
    if spec is not None:
        study.cells(spec, tmp_path / "out")  # and its cells can be laid out


@settings(max_examples=property_examples(200), **SETTINGS)
@given(text=st.text(max_size=200))
def test_any_text_as_a_study_file_is_refused_naming_the_file(tmp_path, text):
    assert load(tmp_path, text) is None or text.strip()


SAFE_KEYS = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True).filter(lambda k: k not in study.OWNED)
SAFE_VALUES = st.one_of(st.from_regex(r"[A-Za-z0-9_.:/+-]{1,10}", fullmatch=True), st.integers(-10**6, 10**6),
                        st.floats(allow_nan=False, allow_infinity=False), st.booleans())


@settings(max_examples=property_examples(200), **SETTINGS)
@given(model_args=st.dictionaries(SAFE_KEYS, SAFE_VALUES, max_size=4),
       policy_args=st.dictionaries(SAFE_KEYS, st.from_regex(r"[A-Za-z0-9_.-]{1,8}", fullmatch=True), max_size=3))
def test_plain_arguments_are_accepted_and_read_back_exactly(tmp_path, model_args, policy_args):
    twice = {k for k in set(model_args) & set(policy_args)
             if study.arg_text(model_args[k]) != study.arg_text(policy_args[k])}
    data = BASE | {"models": [BASE["models"][0] | {"model_args": model_args}],
                   "policies": [{"policy": "random", "args": policy_args}]}
    spec = load(tmp_path, data)
    assert (spec is None) == bool(twice)  # refused exactly when a setting is given twice, differently
    if spec is not None:
        check_cell(spec, tmp_path, "random", model_args, policy_args)


@pytest.mark.parametrize("value", ["16,policy=never", 'a"b', "x}", "\\", "a\nb", " padded"])
def test_the_values_the_properties_refuse_include_these(tmp_path, value):
    data = BASE | {"models": [BASE["models"][0] | {"model_args": {"max_new_tokens": value}}]}
    assert load(tmp_path, data) is None
