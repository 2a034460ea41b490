"""report.html's page data without a browser: the sample browser's categories, the interactive
curves' hover values against summary.json, pictures re-made from an original and checked against
the record's hash, and escaping (tests/test_report_page_browser.py opens the page in Chromium)."""
import base64
import io
import json
import re

import pytest
from PIL import Image, ImageDraw

from collab_eval.analysis import report
from collab_eval.analysis.browser import CATEGORIES, browser_runs, category
from collab_eval.analysis.page import hover, script_json
from collab_eval.analysis.runs import find_runs
from collab_eval.analysis.sample_images import remake
from collab_eval.analysis.summary import summarise, system_labels
from collab_eval.edge import Codec, send, transmit
from collab_eval.pipeline import image_key
from collab_eval.records import SampleRecord
from tests.report_records import POPE, pope_records, write_run

# POPE_CASE (truth, stage 1, stage 2): yes/yes/no breaks, no/yes/No fixes, yes/""/yes fixes, no/yes/yes stays wrong.
ALWAYS_COUNTS = {"fixed": 2, "broken": 1, "unchanged": 1, "not_retransmitted": 0, "failed": 0}


def threshold_records():
    """A threshold run: doc 0 kept its stage-1 answer, doc 1 failed, docs 2 and 3 retransmitted."""
    records = pope_records(policy="threshold")
    records[0].update(answer_stage2=None, answer=records[0]["answer_stage1"], retransmitted=False)
    records[1].update(error="image is empty (0 bytes)", answer="")
    return records


def run_data(html: str) -> list[dict]:
    return [json.loads(m) for m in re.findall(r'<script type="application/json" class="run-data">(.*?)</script>', html)]


@pytest.fixture(scope="module")
def page_report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("page")
    always = write_run(tmp / "always", pope_records())
    threshold = write_run(tmp / "threshold", threshold_records(), name="collab_llava-20260101T000100")
    out = tmp / "report"
    summary = summarise(find_runs(always) + find_runs(threshold), seeds=0)
    report.write(summary, out)  # what collab-eval report does with it
    return summary, out


def test_category_rule():
    r = SampleRecord(task="t", doc_id=0, question="q", model="m", codec="png", policy="always", retransmitted=True,
                     answer_stage1="a", answer_stage2="b")
    assert [category(r, 0.0, 1.0), category(r, 1.0, 0.0), category(r, 0.3, 0.3)] == ["fixed", "broken", "unchanged"]
    assert category(r.model_copy(update={"retransmitted": False, "answer_stage2": None}), 0.0, None) == \
        "not_retransmitted"
    assert category(r.model_copy(update={"error": "boom"}), 0.0, 1.0) == "failed"  # failed wins over what it got to


def test_browser_counts_per_run(page_report):
    summary, _ = page_report
    runs = {r.policy.split()[0]: r for r in browser_runs(summary, system_labels(summary), pictures=None)}
    assert runs["always"].counts == ALWAYS_COUNTS
    assert runs["threshold"].counts == {"fixed": 1, "broken": 0, "unchanged": 1, "not_retransmitted": 1, "failed": 1}
    by_doc = {s.doc_id: s.category for s in runs["threshold"].samples}
    assert by_doc == {0: "not_retransmitted", 1: "failed", 2: "fixed", 3: "unchanged"}
    assert runs["always"].task == POPE and all(s.images is None for s in runs["always"].samples)


def test_page_holds_the_counts_and_every_sample(page_report):
    _, out = page_report
    html = (out / "report.html").read_text()
    data = {d["policy"].split()[0]: d for d in run_data(html)}
    assert data["always"]["counts"] == ALWAYS_COUNTS
    assert [s["doc_id"] for s in data["always"]["samples"]] == [0, 1, 2, 3]
    first = data["always"]["samples"][0]
    assert (first["answer1"], first["answer2"], first["acc1"], first["acc2"]) == ("yes", "no", 1.0, 0.0)
    # The category buttons carry the same counts in the markup (readable without running the script).
    for c in CATEGORIES:
        assert f'data-category="{c}" data-count="{ALWAYS_COUNTS[c]}"' in html


def test_hover_values_are_summary_json_points(page_report):
    _, out = page_report
    html = (out / "report.html").read_text()
    summary = json.loads((out / "summary.json").read_text())
    gated = summary["systems"]["hand-llava:png"]["tasks"][POPE]["curves"]["gated"]
    figure = json.loads(re.search(r'<script type="application/json" id="plot-[^"]*-json">(.*?)</script>', html,
                                  re.S)[1])
    traces = [t for t in figure["data"] if t.get("meta", {}).get("kind") == "gated"]
    assert len(traces) == 2  # bytes and FLOPs panels
    for trace in traces:
        assert len(trace["text"]) == len(gated)
        for text, p in zip(trace["text"], gated):
            values = parse_hover(text)
            tau = p["tau"]  # summary.json writes the ends as "inf" / "-inf"
            assert values["tau"] == ({"inf": "+∞", "-inf": "−∞"}[tau] if isinstance(tau, str) else f"{tau:.6g}")
            assert values["rate"] == pytest.approx(100 * p["rate"], abs=0.005)
            assert values["accuracy"] == pytest.approx(100 * p["accuracy"], abs=0.0005)
            assert values["bytes"] == pytest.approx(p["bytes"], abs=0.05)
            assert values["gflops"] == pytest.approx(p["flops"] / 1e9, rel=1e-5)
    assert traces[0]["x"] == [p["bytes"] for p in gated]


def parse_hover(text: str) -> dict:
    """A gate point's hover text (page.hover's wording), as numbers."""
    m = re.search(r"τ=([^<\s]+)(?:<br>)?retransmitted ([\d.]+)%(?:<br>)?accuracy ([\d.]+)%(?:<br>)?bytes ([\d,.]+)"
                  r"(?:<br>)?GFLOPs ([\d.e+-]+)", text)
    assert m, text
    return {"tau": m[1], "rate": float(m[2]), "accuracy": float(m[3]), "bytes": float(m[4].replace(",", "")),
            "gflops": float(m[5])}


def test_hover_wording():
    from collab_eval.analysis.curves import Point
    text = hover("gate", Point(accuracy=0.5, bytes=1234.5, flops=2.5e9, rate=0.25, tau=0.125))
    assert text == "gate τ=0.125<br>retransmitted 25.00%<br>accuracy 50.000%<br>bytes 1,234.5<br>GFLOPs 2.5"
    assert "&lt;b&gt;" in hover("<b>run</b>", Point(accuracy=0.5, bytes=1, flops=1, rate=0))


def test_embedded_json_cannot_end_its_script():
    text = script_json({"answer": "</script><script>alert(1)</script><!--"})
    assert "<" not in text and ">" not in text
    assert json.loads(text) == {"answer": "</script><script>alert(1)</script><!--"}


def scene(size=(200, 150)) -> Image.Image:
    image = Image.new("RGB", size, (30, 90, 160))
    ImageDraw.Draw(image).rectangle([120, 40, 150, 70], fill=(250, 220, 0))
    return image


def from_uri(uri: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB")


def test_pictures_are_what_the_server_received(tiny_server):
    """The global image is re-made by the family's own global_view (what the edge sent), the crop
    by the edge's framing of the recorded region; both as the server decoded them."""
    view = tiny_server("llava").global_view
    original, codec = scene(), Codec.parse("jpeg:70")
    region, size = (25.0, 0.0, 175.0, 150.0), (48, 48)
    received = send(view(original), codec).image
    crop_region = (110.0, 30.0, 160.0, 80.0)
    crop = transmit(original, crop_region, (48, 48), codec).image
    record = SampleRecord(task="t", doc_id=0, question="q", model="m", codec="jpeg:70", policy="always",
                          roi=[110, 30, 160, 80], roi_image=0, image_sizes=[[200, 150]], global_region=list(region),
                          global_sizes=[list(size)], local_regions=[list(crop_region)], local_sizes=[[48, 48]],
                          image_key=image_key(received), roi_map=[[0.0, 1.0], [0.5, 0.25]],
                          roi_map_region=list(region))
    pics = remake(record, [original], view)
    assert pics.verified is True and pics.problem is None
    assert (pics.original.width, pics.original.height) == (200, 150)  # the box is drawn in original pixels
    # The lossy payloads as the server decoded them, shown losslessly.
    assert from_uri(pics.global_image.uri).tobytes() == received.tobytes()
    assert from_uri(pics.crops[0].uri).tobytes() == crop.tobytes()
    assert (pics.map.width, pics.map.height) == (2, 2) and pics.map_region == list(region)
    # Another image of the same size is re-made but not verified; one of another size is refused.
    other = scene()
    ImageDraw.Draw(other).rectangle([10, 10, 40, 40], fill=(255, 0, 0))
    assert remake(record, [other], view).verified is False
    assert "not the same image" in remake(record, [scene((100, 100))], view).problem
    # Without the family's view (its checkpoint could not be loaded) no global image is shown.
    assert remake(record, [original]).global_image is None
