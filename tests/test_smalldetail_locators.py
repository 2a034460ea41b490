"""The locator comparison's table: each locator's row, and the verdict naming the locator
with the best always accuracy and the best containment, from numbers given by hand."""
from collab_eval.lab.smalldetail_locators import markdown, verdict


def row(always, contains, never=0.5):
    return {"n": 150, "errors": 0, "never": never, "always": always,
            "gated_at_0.25": 0.6, "random_at_0.25": 0.55, "gated_at_0.5": 0.7, "random_at_0.5": 0.6,
            "gated_at_0.75": 0.8, "random_at_0.75": 0.7, "gate_gain_points_ci": (4.0, 16.0),
            "gflops_always": 0.5, "gflops_locating": 0.1, "seconds_locating": 0.02,
            "roi_contains_target": contains, "roi_contains_target_centre": min(1.0, contains + 0.1)}


def test_the_verdict_names_the_best_locator_whichever_it_is():
    locators = {"rel_att": {"t": row(0.8, 0.6)}, "center": {"t": row(0.7, 0.9)}, "grad_att": {"t": row(0.85, 0.5)}}
    assert verdict(locators, "t") == ("Highest always accuracy: `grad_att` (85.0%; the locators span 15.0 points); "
                                      "crop holds the digit most often: `center` (90.0%).")
    table = markdown({"smalldetail-llava": locators})
    lines = [line for line in table.splitlines() if line.startswith("| `")]
    assert [line.split("`")[1] for line in lines] == ["rel_att", "grad_att", "center"]  # ViCrop's order, then others
    assert lines[0] == ("| `rel_att` | 150 (0) | 50.0 | 80.0 | 60.0 vs 55.0 | 70.0 vs 60.0 [+4.0, +16.0] | "
                        "80.0 vs 70.0 | 0.500 (0.100) | 0.020 | 60.0% (70.0%) |")
