"""Every policy, tiles included, through the shared pipeline on each family's tiny
checkpoint (in process, fast): bytes and FLOPs add up, and each policy costs what it should."""
import numpy as np
import pytest
from PIL import Image

from collab_eval.edge import Codec, transmit
from collab_eval.pipeline import Limits, Method, RunCaches, quadrants
from collab_eval.policy import POLICIES, Policy
from collab_eval.records import Outcome
from tests.helpers import check_record, run_one, small_budget

QUESTION = "is there a red square in the image ?"
IMAGES = [  # noise compresses badly, so every image costs bytes; one landscape, one portrait
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (210, 500, 3), dtype=np.uint8)),
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (400, 260, 3), dtype=np.uint8)),
]


def test_quadrants_tile_the_image_row_by_row():
    assert quadrants(5, 3) == [(0.0, 0.0, 2.5, 1.5), (2.5, 0.0, 5.0, 1.5), (0.0, 1.5, 2.5, 3.0), (2.5, 1.5, 5.0, 3.0)]


def test_tiles_needs_no_attention_and_always_sends():
    tiles = Policy("tiles")
    assert not tiles.locates and not Policy("never").locates and Policy("always").locates
    assert tiles.retransmit(0.0, "any/0") and tiles.retransmit(float("inf"), "any/1")


@pytest.fixture(scope="module", params=["qwen2_vl", "instructblip", "qwen2_5_vl", "qwen3_vl"])
def adapter(request, tiny_server):
    return tiny_server(request.param, **small_budget(request.param))


def settings(policy: str, threshold: float = 1.0) -> Method:
    return Method(Policy(policy, threshold=threshold, rate=0.5, seed=1), Codec.parse("png"))


def run(adapter, policy: str, image, key: str, threshold: float = 1.0) -> Outcome:
    return run_one(adapter, [image], QUESTION, method=settings(policy, threshold), limits=Limits(max_new_tokens=3),
                      key=key, scope="t", caches=RunCaches())


@pytest.mark.parametrize("policy", POLICIES)
def test_each_policy_costs_what_it_should(adapter, policy):
    # Both images for the policies that always crop, one for the others: time is short.
    for index, image in enumerate(IMAGES if policy in ("always", "tiles") else IMAGES[:1]):
        r = run(adapter, policy, image, f"t/{index}")
        check_record(r, settings(policy))  # what each policy sends and what it costs
        if policy == "tiles":  # the four tiles, each framed and resized for the encoder
            tiles = [transmit(image, *adapter.frame(q), Codec.parse("png")) for q in quadrants(*image.size)]
            assert r.bytes_local == sum(t.nbytes for t in tiles)
        elif r.retransmitted:
            assert r.flops["generic"] > 0  # a fresh cache per sample: the generic map is paid here


def test_tiles_answers_from_five_images(adapter):
    """The tiles answer costs five images' vision encoding: stage 2 exceeds five times stage
    1's vision and connector (the prompt is longer, too)."""
    r = run(adapter, "tiles", IMAGES[0], "t/0")
    assert r.flops["stage2"] > 5 * (r.flops["vision"] + r.flops["projector"])
    single = run(adapter, "never", IMAGES[0], "t/0")
    assert (r.answer_stage1, r.scores) == (single.answer_stage1, single.scores)  # stage 1 is the same computation
