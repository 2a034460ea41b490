"""Failed samples keep their costs, and one broken plug-in fails only what it must.

Plug-in scores and locators here are real distributions (a dist-info with entry points on
sys.path, as pip installs them), run in-process through the pipeline on the tiny LLaVA. The
stage-2 failure is injected by a wrapper around the real server that raises where a GPU runs
out of memory (the second pass), everything else running for real."""
import math
import textwrap

import numpy as np
import pytest
from loguru import logger
from PIL import Image

from collab_eval import locators, scores
from collab_eval.edge import Codec, encode_request
from collab_eval.pipeline import Limits, Method, RunCaches, SampleInput, run_batch
from collab_eval.policy import Policy
from collab_eval.records import SampleRecord, failure_reason
from tests.helpers import check_failed, check_record

QUESTION = "what is the number on the sign ?"
LIMITS = Limits(max_new_tokens=3)

PLUGIN = '''
import math
import numpy as np
from collab_eval.locators import Located, MapLocator, Mapped


class Raises:
    kind = "box"

    def locate(self, ask):
        return 1 / 0


def box(value):
    class Box:
        kind = "box"

        def locate(self, ask):
            return Located(0, box=value, flops={"locate": 11})
    return Box


PartlyOutside = box((-30, 10, 50, 400))      # the image is 200 x 120
WhollyOutside = box((500, 500, 600, 600))
Empty = box((40, 40, 40, 80))
NotFinite = box((0, 0, math.nan, 10))


class NanMap(MapLocator):
    def image_map(self, ask, image, question_map):
        return Mapped(np.full((4, 4), np.nan), {"locate": 5})


class InfMap(MapLocator):
    def image_map(self, ask, image, question_map):
        grid = np.ones((4, 4))
        grid[1, 2] = np.inf
        return Mapped(grid, {"locate": 5})


class TilesThenFails(MapLocator):
    """Asks the edge for two tiles, then fails: the tiles were sent and count."""
    def locate(self, ask):
        w, h = ask.sizes[0]
        self.sent = ask.send_tiles(0, [(0, 0, w / 2, h), (w / 2, 0, w, h)])
        raise RuntimeError("argument out of range")


def nan_score(answer):
    return math.nan


def string_score(answer):
    return "0.5"


def bool_score(answer):
    return True
'''

ENTRY_POINTS = """[collab_eval.locators]
raises = hostile:Raises
partly_outside = hostile:PartlyOutside
wholly_outside = hostile:WhollyOutside
empty_box = hostile:Empty
nan_box = hostile:NotFinite
nan_map = hostile:NanMap
inf_map = hostile:InfMap
tiles_then_fails = hostile:TilesThenFails

[collab_eval.scores]
nan_score = hostile:nan_score
string_score = hostile:string_score
bool_score = hostile:bool_score
"""


@pytest.fixture
def hostile(tmp_path, monkeypatch):
    """The hostile plug-ins installed (a dist-info on sys.path); registries re-read around the test."""
    site = tmp_path / "site"
    info = site / "hostile-0.1.dist-info"
    info.mkdir(parents=True)
    (site / "hostile.py").write_text(textwrap.dedent(PLUGIN))
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hostile\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(site))
    for cache in (locators.load.cache_clear, scores.installed.cache_clear, scores._warned.clear):
        cache()
    yield site
    for cache in (locators.load.cache_clear, scores.installed.cache_clear, scores._warned.clear):
        cache()


def image(width=200, height=120, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def method(locator="rel_att", score="max", policy="always"):
    return Method(Policy(policy, threshold=-math.inf if policy == "always" else 1.0), Codec.parse("png"),
                  score=score, locator=locator)


def one(server, how: Method, picture=None):
    sample = SampleInput(key="t/0", scope="t", question=QUESTION, limits=LIMITS,
                         visuals=lambda: [picture if picture is not None else image()])
    (result,) = run_batch(server, [sample], method=how, caches=RunCaches())
    return result


def as_record(result, how: Method) -> dict:
    """The record the adapter writes of a result (model_adapters.lmms_adapter.record's fields)."""
    header = dict(run_id="r", task="t", doc_id=0, question=QUESTION, model="m", codec="png",
                  policy=how.policy.name, score_name=how.score,
                  settings={"codec": "png", "locator": how.locator, "highres": False})
    if result.error is None:
        return SampleRecord(**header, **vars(result.outcome)).model_dump()
    return SampleRecord(**header, **{**vars(result.outcome), "answer": ""}, error=failure_reason(result.error),
                        failed_step=result.failed_step).model_dump()


def assert_failed_after_stage1(r: dict, step: str):
    """Stage 1 ran and the global image was sent: both are in the record."""
    check_failed(r)
    assert r["failed_step"] == step and r["answer"] == ""
    assert r["bytes_global"] > 0 and r["answer_stage1"] is not None and len(r["min_entropy"]) >= 1
    assert r["flops"]["vision"] > 0 and r["flops"]["prefill"] > 0 and r["flops"]["decode"] >= 0
    assert r["flops_total"] == sum(r["flops"].values()) > 0
    assert r["bytes_total"] == r["bytes_global"] + r["bytes_request"] + r["bytes_local"] + r["bytes_tiles"]


# ----- part 1: a failed sample keeps what it cost ------------------------------------------------
def test_a_locator_error_keeps_stage_one_and_names_the_locator(tiny_server, hostile):
    server = tiny_server("llava")
    fine = one(server, method("center"))
    result = one(server, method("raises"))
    r = as_record(result, method("raises"))
    assert r["error"] == "LocatorError: locator 'raises' failed: ZeroDivisionError: division by zero"
    assert_failed_after_stage1(r, "locate")
    # Stage 1 and the global image as a sample that did not fail paid them.
    assert r["bytes_global"] == fine.outcome.bytes_global and r["bytes_total"] == r["bytes_global"]
    assert r["answer_stage1"] == fine.outcome.answer_stage1 and r["scores"] == fine.outcome.scores
    assert all(r["flops"][p] == fine.outcome.flops[p] for p in ("vision", "projector", "prefill", "decode"))
    assert r["seconds"]["total"] >= r["seconds"]["stage1"] > 0 and "roi" in r["seconds"]


def test_tiles_sent_before_a_locator_fails_are_counted(tiny_server, hostile):
    server = tiny_server("llava")
    picture = image(300, 200, seed=4)
    result = one(server, method("tiles_then_fails"), picture)
    r = as_record(result, method("tiles_then_fails"))
    assert "locator 'tiles_then_fails' failed: RuntimeError: argument out of range" in r["error"]
    sent = locators.load("tiles_then_fails").sent
    assert len(sent) == 2 and r["bytes_tiles"] == sum(t.nbytes for t in sent) > 0
    assert r["bytes_total"] == r["bytes_global"] + r["bytes_tiles"]
    assert_failed_after_stage1(r, "locate")


class OutOfMemoryInStageTwo:
    """The real server, whose second pass (two images: global and crop) fails as a GPU out of
    memory would; every other call goes to the server itself."""

    def __init__(self, server):
        self.server = server

    def __getattr__(self, name):
        return getattr(self.server, name)

    def answer_batch(self, requests, *args, **kwargs):
        if any(len(images) > 1 for images, _ in requests):
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.server.answer_batch(requests, *args, **kwargs)


def test_an_error_in_stage_two_keeps_everything_sent_before(tiny_server):
    server = tiny_server("llava")
    how = method("rel_att")
    fine = one(server, how).outcome
    result = one(OutOfMemoryInStageTwo(server), how)
    r = as_record(result, how)
    assert r["error"] == "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert_failed_after_stage1(r, "stage2")
    # Everything but stage 2 as the sample that finished: the global, the request, the crop.
    for field in ("bytes_global", "bytes_request", "bytes_local", "roi", "answer_stage1", "score"):
        assert r[field] == getattr(fine, field), field
    assert r["bytes_request"] == len(encode_request(tuple(fine.roi))) and r["bytes_local"] > 0
    assert r["bytes_total"] == fine.bytes_total and r["flops"]["stage2"] == 0
    assert r["flops_total"] == fine.flops_total - fine.flops["stage2"]
    assert r["retransmitted"] and r["answer_stage2"] is None


def test_a_failed_batch_member_keeps_its_own_costs(tiny_server):
    """Batched: the sample whose stage 2 fails keeps its costs, the others finish as alone."""
    server = OutOfMemoryInStageTwo(tiny_server("llava"))
    samples = [SampleInput(key=f"t/{i}", scope="t", question=QUESTION, limits=LIMITS,
                           visuals=lambda i=i: [image(seed=i)]) for i in range(2)]
    how = Method(Policy("threshold", threshold=math.inf), Codec.parse("png"))  # never retransmits: all finish
    results = list(run_batch(server, samples, method=how, caches=RunCaches()))
    assert [r.error for r in results] == [None, None]
    results = list(run_batch(server, samples, method=method("rel_att"), caches=RunCaches()))
    assert all(r.failed_step == "stage2" and r.outcome.bytes_local > 0 for r in results)


def test_a_visual_that_is_no_image_fails_at_reading_with_nothing_sent(tiny_server):
    server = tiny_server("llava")
    sample = SampleInput(key="t/0", scope="t", question=QUESTION, limits=LIMITS, visuals=lambda: ["clip.mp4"])
    (result,) = run_batch(server, [sample], method=method(), caches=RunCaches())
    r = as_record(result, method())
    assert r["failed_step"] == "read" and r["bytes_total"] == r["flops_total"] == 0
    check_failed(r)


# ----- part 2: locators' answers checked, naming the locator ------------------------------------
def test_a_box_partly_outside_is_clipped_and_recorded(tiny_server, hostile):
    server = tiny_server("llava")
    result = one(server, method("partly_outside"))
    assert result.error is None, result.error
    out = result.outcome
    assert out.roi == [0, 10, 50, 120] and out.roi_clipped_from == [-30.0, 10.0, 50.0, 400.0]
    assert out.flops["locate"] == 11 and out.bytes_local > 0
    check_record(out, method("partly_outside"), server.name)
    inside = one(server, method("center")).outcome
    assert inside.roi_clipped_from is None


@pytest.mark.parametrize("name, message", [
    ("wholly_outside", "locator 'wholly_outside' returned box (500.0, 500.0, 600.0, 600.0) wholly outside the "
                       "200x120 image"),
    ("empty_box", "locator 'empty_box' returned an empty box (40.0, 40.0, 40.0, 80.0)"),
    ("nan_box", "locator 'nan_box' returned box (0, 0, nan, 10), expected four finite numbers"),
    ("nan_map", "locator 'nan_map' returned a map with 16 NaN and 0 infinite value(s) of 16"),
    ("inf_map", "locator 'inf_map' returned a map with 0 NaN and 1 infinite value(s) of 16"),
])
def test_a_box_or_map_that_cannot_be_used_fails_naming_the_locator(tiny_server, hostile, name, message):
    server = tiny_server("llava")
    result = one(server, method(name))
    r = as_record(result, method(name))
    assert message in r["error"], r["error"]
    assert_failed_after_stage1(r, "locate")
    assert r["flops"]["locate"] in (5, 11)  # what it reported it spent is counted


# ----- part 2: scores isolated ------------------------------------------------------------------
def test_a_bad_score_not_chosen_is_missing_with_one_warning(tiny_server, hostile):
    server = tiny_server("llava")
    messages = []
    sink = logger.add(messages.append, level="WARNING")
    try:
        results = [one(server, method("center", policy="always"), image(seed=i)) for i in range(3)]
    finally:
        logger.remove(sink)
    for result in results:
        assert result.error is None, result.error
        assert {"max", "mean", "first"} <= set(result.outcome.scores)
        assert not {"nan_score", "string_score", "bool_score"} & set(result.outcome.scores)
    warned = [m for m in messages if "recorded as missing" in m]
    assert len(warned) == 3, warned  # one per score, not per sample
    assert any("score nan_score returned nan" in m for m in warned)
    assert any("score string_score returned str '0.5', expected a number" in m for m in warned)
    assert any("score bool_score returned bool True, expected a number" in m for m in warned)


def test_a_bad_chosen_score_fails_the_sample_at_the_gate(tiny_server, hostile):
    server = tiny_server("llava")
    how = method("center", score="nan_score", policy="threshold")
    r = as_record(one(server, how), how)
    assert r["error"].endswith("score nan_score returned nan, expected a number (+inf: maximally uncertain)")
    assert_failed_after_stage1(r, "gate")
    assert r["bytes_total"] == r["bytes_global"] and not r["retransmitted"]


@pytest.mark.parametrize("value, refused", [
    ("0.5", True), (True, True), (False, True), (None, True), ([0.5], True), (np.bool_(True), True),
    (np.array([1.0, 2.0]), True), (complex(1, 0), True), (math.nan, True), (-math.inf, True),
    (0.5, False), (3, False), (np.float32(0.25), False), (np.int64(2), False), (math.inf, False),
])
def test_a_score_value_must_be_a_real_number(value, refused):
    import torch
    answer = scores.StageOneAnswer(torch.zeros(2, 5))
    if refused:
        with pytest.raises(scores.ScoreError, match="score odd returned"):
            scores.value_of("odd", lambda a: value, answer)
    else:
        assert scores.value_of("odd", lambda a: value, answer) == float(value)


def test_a_tensor_score_is_read_as_its_one_number():
    import torch
    answer = scores.StageOneAnswer(torch.zeros(2, 5))
    assert scores.value_of("t", lambda a: torch.tensor(0.75), answer) == 0.75
    with pytest.raises(scores.ScoreError):
        scores.value_of("t", lambda a: torch.tensor(True), answer)
    with pytest.raises(scores.ScoreError):
        scores.value_of("t", lambda a: torch.ones(2), answer)
