"""Model args are checked before the model loads, and every refusal names the argument,
the value and what is allowed.

``pretrained`` is an existing but empty directory in most cases: had the adapter tried to
load it, transformers would raise its own error instead of the one asserted."""
import pytest

from collab_eval.model_args import ModelArgError


@pytest.fixture
def empty_checkpoint(tmp_path):
    path = tmp_path / "empty-checkpoint"
    path.mkdir()
    return str(path)


@pytest.mark.parametrize("args, message", [
    ({"threshold": "abc"},
     r"collab_llava: threshold must be a number of nats \(inf: never retransmit, -inf: always\), got 'abc'"),
    ({"threshold": float("nan")}, r"threshold must be a number of nats .*, got nan"),
    ({"layer": "abc"}, r"collab_llava: layer must be an integer, got 'abc'"),
    ({"layer": 1.5}, r"layer must be an integer, got 1.5"),
    ({"layer": -1}, r"layer must be >= 0, got -1"),
    ({"max_new_tokens": "abc"}, r"collab_llava: max_new_tokens must be an integer, got 'abc'"),
    ({"max_new_tokens": 0}, r"max_new_tokens must be >= 1, got 0"),
    ({"seed": "x"}, r"seed must be an integer, got 'x'"),
    ({"rate": "often"}, r"rate must be a number in \[0, 1\], got 'often'"),
    ({"resume": "maybe"}, r"resume must be true or false, got 'maybe'"),
    ({"run_id": "../escape"}, r"run_id must be 1-128 letters, digits.*got '../escape'"),
    ({"dtype": "int4"}, r"dtype must be one of \('auto', 'float32', 'float16', 'bfloat16'\), got 'int4'"),
])
def test_bad_values_are_refused_before_loading(args, message, empty_checkpoint, tmp_path):
    from model_adapters.llava import CollabLlava
    with pytest.raises(ModelArgError, match=message):
        CollabLlava(pretrained=empty_checkpoint, records_dir=str(tmp_path / "records"), **args)


def test_a_missing_local_checkpoint_is_named(tmp_path):
    from model_adapters.llava import CollabLlava
    for missing in ("/no/such/dir", "./no-such-dir", "no/such/dir"):
        with pytest.raises(ModelArgError, match=rf"pretrained={missing}: no such local directory"):
            CollabLlava(pretrained=missing, records_dir=str(tmp_path / "records"))


def test_an_unusable_records_dir_is_found_before_loading(empty_checkpoint, tmp_path):
    from model_adapters.llava import CollabLlava
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    with pytest.raises(ModelArgError, match=rf"records_dir={a_file}: is a file, not a directory"):
        CollabLlava(pretrained=empty_checkpoint, records_dir=str(a_file))
    with pytest.raises(ModelArgError, match=rf"records_dir={a_file}/records: cannot write there \(Not a directory\)"):
        CollabLlava(pretrained=empty_checkpoint, records_dir=str(a_file / "records"))


def test_family_args_are_checked_before_loading(empty_checkpoint, tmp_path):
    from model_adapters.instructblip import CollabInstructBlip
    from model_adapters.qwen2_vl import CollabQwen2VL
    with pytest.raises(ModelArgError, match=r"collab_qwen2_vl: max_pixels must be an integer, got 'big'"):
        CollabQwen2VL(pretrained=empty_checkpoint, records_dir=str(tmp_path), max_pixels="big")
    with pytest.raises(ModelArgError, match=r"collab_instructblip: qformer_layer must be an integer, got 'x'"):
        CollabInstructBlip(pretrained=empty_checkpoint, records_dir=str(tmp_path), qformer_layer="x")


@pytest.mark.parametrize("threshold, retransmits", [(float("inf"), False), (float("-inf"), True)])
def test_infinite_thresholds_mean_never_and_always(threshold, retransmits, tiny_llava_path, tmp_path):
    """lmms-eval hands ``threshold=inf`` over as a float; the gate never (inf) or always
    (-inf) fires, an empty answer's infinite score included, and the run starts."""
    from model_adapters.llava import CollabLlava
    model = CollabLlava(pretrained=tiny_llava_path, records_dir=str(tmp_path), policy="threshold", threshold=threshold)
    policy = model.method.policy
    assert [policy.retransmit(s, "k") for s in (0.0, 2.5, float("inf"))] == [retransmits] * 3
