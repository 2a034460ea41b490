"""Documents with several images, on each family's tiny checkpoint (in process): one map per
image, each in that image's own grid; every global image sent and counted; the crop taken
from the image the question attends to most; stage 2 reads every global image plus the crop."""
import numpy as np
import pytest
from PIL import Image

from collab_eval.edge import Codec, transmit
from collab_eval.pipeline import Limits, Method, RunCaches
from collab_eval.policy import Policy
from tests.helpers import run_one, small_budget

QUESTION = "which picture shows the red square ?"
IMAGES = [  # different shapes, so a map read from the wrong image's grid would not fit
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 300, 3), dtype=np.uint8)),
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (260, 110, 3), dtype=np.uint8)),
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (90, 90, 3), dtype=np.uint8)),
]


@pytest.fixture(scope="module", params=["llava", "qwen2_vl", "instructblip", "qwen2_5_vl", "qwen3_vl"])
def adapter(request, tiny_server):
    return tiny_server(request.param, **small_budget(request.param))


def sent(adapter, image):
    return transmit(image, *adapter.frame((0.0, 0.0, float(image.width), float(image.height))), Codec.parse("png"))


def expected_grid(adapter, image) -> tuple[int, int]:
    if hasattr(adapter, "merge"):  # Qwen2-VL: the image's own merged grid
        width, height = adapter.frame((0.0, 0.0, float(image.width), float(image.height)))[1]
        patch = adapter.factor // adapter.merge
        return height // patch // adapter.merge, width // patch // adapter.merge
    return adapter.grid


def test_one_map_per_image_in_its_own_grid(adapter):
    answer = adapter.answer([sent(adapter, im).image for im in IMAGES], QUESTION, Limits(max_new_tokens=2),
                            with_attention=True)
    assert [grid.shape for grid in answer.attentions] == [expected_grid(adapter, im) for im in IMAGES]
    shares = [float(grid.sum()) for grid in answer.attentions]
    assert all(share > 0 for share in shares) and sum(shares) <= 1.0 + 1e-5  # one softmax row split between images


def test_every_image_sent_and_the_crop_from_the_one_attended(adapter):
    settings = Method(Policy("always"), Codec.parse("png"))
    out = run_one(adapter, IMAGES, QUESTION, method=settings, limits=Limits(max_new_tokens=2),
                     key="t/0", scope="multi", caches=RunCaches())
    payloads = [sent(adapter, im).nbytes for im in IMAGES]
    assert out.bytes_global_images == payloads and out.bytes_global == sum(payloads)
    assert out.image_sizes == [list(im.size) for im in IMAGES]
    stage1 = adapter.answer([sent(adapter, im).image for im in IMAGES], QUESTION, Limits(max_new_tokens=2),
                            with_attention=True, keep_prefix=True)
    assert out.roi_image == int(np.argmax([grid.sum() for grid in stage1.attentions]))
    width, height = IMAGES[out.roi_image].size
    x0, y0, x1, y1 = out.roi
    assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    # Stage 2 answers from the three globals and the crop, continuing from stage 1's cached
    # prefix (through the first global): what a four-image pass from that prefix costs.
    crop = transmit(IMAGES[out.roi_image], *adapter.frame(tuple(out.roi)), Codec.parse("png")).image
    four = adapter.answer([*(sent(adapter, im).image for im in IMAGES), crop], QUESTION, Limits(max_new_tokens=2),
                          with_attention=False, prefix=stage1.prefix)
    fresh = adapter.answer([*(sent(adapter, im).image for im in IMAGES), crop], QUESTION, Limits(max_new_tokens=2),
                           with_attention=False)
    assert out.flops["stage2"] == sum(four.flops.values()) < sum(fresh.flops.values())
    assert out.answer_stage2 == four.text == fresh.text
    assert out.bytes_total == out.bytes_global + out.bytes_request + out.bytes_local


def test_instructblip_maps_each_image_through_its_own_cross_attention(adapter):
    """Image i's 32 query slots read image i's patches: its map goes through image i's
    Q-Former cross-attention (planted: image 0's queries all look at the first patch,
    image 1's at the last)."""
    import torch
    if not hasattr(adapter, "qformer_layer"):
        pytest.skip("InstructBLIP only")
    patches = adapter.grid[0] * adapter.grid[1]
    from model_adapters.attention_capture import Probe
    cross = torch.zeros(2, adapter.queries, 1 + patches)  # (images, queries, CLS + patches), head-averaged
    cross[0, :, 1] = 1.0
    cross[1, :, -1] = 1.0
    probes = {adapter.cross_attention_module(): Probe(last_only=False, weights=cross)}
    row = np.full(adapter.queries, 1.0 / adapter.queries, dtype=np.float32)
    first, second = (adapter.patch_grid(row, {}, image_index=i, probes=probes) for i in (0, 1))
    assert first.flat[0] == pytest.approx(1.0) and second.flat[-1] == pytest.approx(1.0)


def test_image_placeholders_in_the_prompt_are_removed(adapter):
    """A task that writes "<image>" into its text (MUIRBench) or the processor's own image
    token: the adapter places the images itself, so the text keeps neither."""
    own = str(adapter.processor.image_token)
    assert adapter.without_image_placeholders(f"Which one? <image> <image>{own} A. x") == "Which one?   A. x"
