"""Rendering a summary as report.md, a self-contained report.html, figures and summary.json.

The report is first built as a list of blocks (headings, paragraphs, tables, figures); two
small renderers turn it into Markdown and HTML. Every piece of text that comes from a run
(model outputs, questions, names) passes through the renderer's escaping: nothing from a
record reaches the page as markup.
"""
from __future__ import annotations

import base64
import html
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path

from collab_eval.analysis import curves, latency_report, plots, study_figures
from collab_eval.analysis.blocks import Figure, Heading, Para, Table, auc, gflops, nbytes, pct, signed_pct, tau
from collab_eval.analysis.curves import Point
from collab_eval.analysis.summary import CORRECT, Saving, Summary, TaskSummary, savings, system_labels
from collab_eval.analysis.views import TaskView
from collab_eval.systems import non_default

RATE_ROWS = tuple(i / 10 for i in range(11))  # the gate's operating points shown: nearest to these rates
EXAMPLES = 6


# ----- the document -------------------------------------------------------------------
INTRO = (
    "How to read this report. Each sample is answered first from a downscaled global image "
    "(stage 1). The gate may then ask the edge for a crop of the region the model attended to, and "
    "the model answers again from both images (stage 2). Bytes are the encoded payloads sent per "
    "sample (global image, crop request, crop); FLOPs are the server's compute per sample. "
    "Accuracy is the task's own lmms-eval metric, applied to the stage-1 and the stage-2 answer "
    "of every sample. From one run that retransmitted every sample (policy always) the report "
    "derives, without running the model again: the entropy gate at every threshold τ "
    "(retransmit when the stage-1 min-entropy score exceeds τ), random retransmission at every "
    "rate (its expectation, and a band over seeded draws), and the oracle that retransmits only "
    "where stage 2 scores higher than stage 1 (the upper bound any gate can reach). "
    "never and always are the two ends. Runs of other policies appear as single points. "
    "A curve above and to the left of another is better: more accuracy for fewer bytes.")


HEADLINE = ["task", "metric", "system", "samples", "never: acc / bytes", "always: acc / bytes",
            "gate reaching the target: τ / retransmitted / acc / bytes", "bytes saved vs always",
            "FLOPs saved vs always", "bytes saved vs original image"]


def headline_rows(summary: Summary) -> list[list[str]]:
    """Per task and system: never, always, and the cheapest entropy-gate point that reaches the
    target fraction of always's accuracy, with what it saves."""
    rows = []
    labels = system_labels(summary)
    tasks = sorted({t for s in summary.systems.values() for t in s.tasks})
    for task in tasks:
        for name, entry in sorted(summary.systems.items(), key=lambda item: labels[item[0]]):
            system = labels[name]
            e = entry.tasks.get(task)
            if e is None:
                continue
            if e.unscored:
                rows.append([task, e.metric, system, "–", f"not scored: {e.unscored}"] + ["–"] * 5)
                continue
            if e.from_always is None:  # a baseline's own never run (the HD baseline) still gives that end
                never = next((p for p in e.points if p.policy == "never"), None)
                rows.append([task, e.metric, system, str(never.n) if never else "–",
                             f"{pct(never.point.accuracy)}% / {nbytes(never.point.bytes)}" if never else "–",
                             "no always run: no curves"] + ["–"] * 4)
                continue
            f = e.from_always
            gate = f.reach_target["gated"]
            rows.append([task, e.metric, system, str(f.n), f"{pct(f.never.accuracy)}% / {nbytes(f.never.bytes)}",
                         f"{pct(f.always.accuracy)}% / {nbytes(f.always.bytes)}"]
                        + ([f"τ={tau(gate.tau)} / {pct(gate.rate)}% / {pct(gate.accuracy)}% / {nbytes(gate.bytes)}",
                            signed_pct(gate.saving_vs_always), signed_pct(gate.flops_saving_vs_always),
                            signed_pct(gate.saving_vs_original)]
                           if gate else ["none reaches it", "–", "–", "–"]))
    return rows


def headline(summary: Summary) -> str:
    """The headline as a plain-text table, for the terminal."""
    target = f"{100 * summary.settings.target_fraction:g}% of always"
    headers = [h.replace("the target", target) for h in HEADLINE]
    rows = headline_rows(summary)
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line("-" * w for w in widths), *map(line, rows)])


def document(summary: Summary) -> list:
    blocks: list = [Heading(1, "collab-eval report"), Para(INTRO)]
    target = f"{100 * summary.settings.target_fraction:g}% of always"
    blocks += [Heading(2, "Headline"),
               Table([h.replace("the target", target) for h in HEADLINE], headline_rows(summary)),
               Para(f"Bytes are mean bytes per sample. The gate point is the cheapest entropy-gate threshold whose "
                    f"accuracy reaches {target}-retransmit accuracy; savings are relative (+30% means 30% fewer).")]
    labels = system_labels(summary)
    from collab_eval.analysis import gaps
    blocks += [Para(note) for note in gaps.notes(summary, labels)]  # what is missing, what failed
    blocks += [Heading(2, "Runs"), Table(
        ["run", "lmms-eval model", "system", "policy", "tasks", "samples", "failed samples"],
        [[r.name, r.adapter, labels.get(r.system, r.system), r.label, ", ".join(r.tasks), str(r.samples),
          str(r.errors)] for r in summary.runs])]
    blocks += systems_section(summary, labels)
    tasks = sorted({t for s in summary.systems.values() for t in s.tasks})
    for task in tasks:
        entries = {labels[name]: s.tasks[task] for name, s in summary.systems.items() if task in s.tasks}
        views = [replace(v, system=labels.get(v.system, v.system)) for v in summary.views if v.task == task]
        blocks += task_section(task, entries, views, summary.settings.target_fraction)
    blocks += study_figures.sections(summary)  # codecs against the gate, savings across models
    return blocks


def task_section(task: str, entries: dict[str, TaskSummary], views: list[TaskView], target_fraction: float) -> list:
    not_scored = [Para(f"Not scored for {k}: {e.unscored}") for k, e in entries.items() if e.unscored]
    entries = {k: e for k, e in entries.items() if not e.unscored}
    if not entries:
        return [Heading(2, f"Task {task}"), *not_scored]
    return [*task_blocks(task, entries, views, target_fraction), *not_scored]


def task_blocks(task: str, entries: dict[str, TaskSummary], views: list[TaskView], target_fraction: float) -> list:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", task)
    with_curves = {k: e.from_always for k, e in entries.items() if e.from_always}
    metric = next(iter(entries.values())).metric
    blocks: list = [Heading(2, f"Task {task}"),
                    Para(f"Accuracy is lmms-eval's {metric}, in percent: per sample, the task's own "
                         "process_results on the answer (the entry named score where that metric is a dict; where "
                         "documents return different metrics, each document's own), or for a task without one, the "
                         "metric's registered lmms-eval function on the document's target. Bytes and FLOPs are "
                         "means per sample; FLOPs in GFLOPs. Figures: a cost axis spanning a factor of "
                         f"{plots.LOG_SPAN:g} or more is logarithmic; the accuracy axis spans at least "
                         f"{100 * plots.MIN_SPAN:g} points; each system keeps its colour across reports.")]
    blocks.append(Figure(f"{slug}_tradeoff.png", plots.tradeoff(task, entries),
                         f"{task}: accuracy against bytes and FLOPs"))
    blocks += calibrated_section(entries)
    blocks += latency_report.section(task, entries)
    if with_curves:
        blocks += [Heading(3, "Ends and oracle"), Table(
            ["system", "samples", "failed", "never: acc", "never: bytes", "always: acc", "always: bytes",
             "oracle: acc", "oracle: retransmitted", "original image: bytes",
             "lmms-eval's own result for the always run"],
            [[k, str(e.n), str(e.errors), pct(e.never.accuracy), nbytes(e.never.bytes),
              pct(e.always.accuracy), nbytes(e.always.bytes), pct(e.oracle.accuracy),
              pct(e.oracle.rate) + "%", nbytes(e.bytes_original), pct(e.lmms_eval_accuracy)]
             for k, e in with_curves.items()])]
        blocks += scores_section(task, slug, entries, target_fraction)
        blocks += [Heading(3, f"Cheapest operating point reaching {100 * target_fraction:g}% of "
                              "always-retransmit accuracy"), Table(
            ["system", "target acc", "gate", "τ", "retransmitted", "bytes", "GFLOPs", "acc",
             "bytes saved vs original image", "bytes saved vs always", "FLOPs saved vs always"],
            [[k, pct(e.target_accuracy), gate, *reach_cells(s)]
             for k, e in with_curves.items() for gate, s in e.reach_target.items()])]
        blocks.append(Para("Savings are relative: +60% means 60% fewer bytes than sending the original image "
                           "(same codec) or than retransmitting every sample; a negative saving costs more."
                           + (" Where always-retransmit accuracy is 0, every point reaches the target and the row "
                              "only shows the cheapest one."
                              if any(e.always.accuracy == 0 for e in with_curves.values()) else "")))
        for k, e in with_curves.items():
            blocks += [Heading(3, f"Entropy-gate operating points: {k}"), Table(
                ["τ", "retransmitted", "bytes", "GFLOPs", "acc"],
                [[tau(p.tau), pct(p.rate) + "%", nbytes(p.bytes), gflops(p.flops), pct(p.accuracy)]
                 for p in thin(e.curves.gated)])]
        blocks.append(Para(f"Shown: the thresholds nearest to each 10% of retransmission; summary.json holds all "
                           f"{sum(len(e.curves.gated) for e in with_curves.values())} points."))
    points = [(k, p) for k, e in entries.items() for p in e.points]
    if points:
        blocks += [Heading(3, "Other runs"),
                   Para("Each run's own outcome, rescored like the curves. Where the system has an always run, the "
                        "last column is what that run predicts for the same policy (same τ, or same rate and seed, "
                        "or never): the two agree exactly when the runs are deterministic."), Table(
            ["system", "run", "policy", "retransmitted", "bytes", "GFLOPs", "acc",
             "derived from the always run: acc / bytes / GFLOPs / retransmitted"],
            [[k, p.run, p.label, pct(p.point.rate) + "%", nbytes(p.point.bytes), gflops(p.point.flops),
              pct(p.point.accuracy), derived(p.derived_from_always)] for k, p in points])]
    if views:
        blocks += [Heading(3, "Stage-1 uncertainty"),
                   Figure(f"{slug}_uncertainty.png", plots.histograms(task, views), f"{task}: score histograms")]
        for view in views:
            blocks += [Heading(3, f"Examples: {view.system}"),
                       Para("Samples whose answer changed correctness in stage 2 first; model outputs verbatim "
                            "up to 200 characters (control characters shown as \\uXXXX, line breaks as ⏎)."),
                       Table(["doc", "question", "ground truth", "stage-1 answer", "score", "stage-2 answer",
                              "acc 1 → 2"], examples(view))]
    return blocks


def systems_section(summary: Summary, labels: dict[str, str]) -> list:
    """What each system is: its checkpoint and the settings that tell it apart, as the tables name it."""
    if len(summary.systems) < 2:
        return []
    rows = [[labels[name], s.checkpoint, s.adapter, ", ".join(non_default(s.full_settings())) or "defaults",
             str(s.full_settings().get("codec"))] for name, s in sorted(summary.systems.items(),
                                                                          key=lambda item: labels[item[0]])]
    return [Heading(2, "Systems"),
            Para("A system is a checkpoint with every setting that changes its answers or costs; each is named by "
                 "its checkpoint and the settings in which the systems of this report differ."),
            Table(["system", "checkpoint", "lmms-eval model", "settings not at their default", "codec"], rows)]


def scores_section(task: str, slug: str, entries: dict[str, TaskSummary], target_fraction: float) -> list:
    """Every recorded uncertainty score as a gate, from the always run: how well it flags stage-1
    errors (AUROC) and the cheapest threshold reaching the target, one row per system and score."""
    rows = []
    for k, e in entries.items():
        f = e.from_always
        if f is None:
            continue
        for score, points in {f.score_name: f.curves.gated, **f.curves.gated_other_scores}.items():
            reach = savings(curves.cheapest_reaching(points, f.target_accuracy), f.bytes_original, f.always)
            rows.append([k, score + (" (the run's)" if score == f.score_name else ""), auc(f.auroc.get(score)),
                         *([tau(reach.tau), pct(reach.rate) + "%", nbytes(reach.bytes), gflops(reach.flops),
                            pct(reach.accuracy), signed_pct(reach.saving_vs_always),
                            signed_pct(reach.flops_saving_vs_always)] if reach else ["none reaches it"] + ["–"] * 6)])
    if not rows:
        return []
    return [Heading(3, "Uncertainty scores as gates"),
            Para(f"Every installed score (docs/scores.md) is recorded per sample, so the always run gives each one's "
                 f"gate. AUROC: the probability that a wrong stage-1 answer (accuracy below {CORRECT:g}) gets a higher "
                 "score than a right one; 0.5 is chance, 1 is perfect. Then the cheapest threshold of that score "
                 f"whose accuracy reaches {100 * target_fraction:g}% of always-retransmit accuracy (τ in the score's "
                 "own unit)."),
            Table(["system", "score", "AUROC", "τ", "retransmitted", "bytes", "GFLOPs", "acc", "bytes saved vs always",
                   "FLOPs saved vs always"], rows),
            Figure(f"{slug}_scores.png", plots.score_curves(task, entries), f"{task}: the gate on each score")]


def reach_cells(s: Saving | None) -> list[str]:
    """τ, retransmitted, bytes, GFLOPs, acc and the three savings of a cheapest point (dashes for none)."""
    if s is None:
        return ["–", "–%", "–", "–", "–", "–", "–", "–"]
    return [tau(s.tau), pct(s.rate) + "%", nbytes(s.bytes), gflops(s.flops), pct(s.accuracy),
            signed_pct(s.saving_vs_original), signed_pct(s.saving_vs_always), signed_pct(s.flops_saving_vs_always)]


def calibrated_section(entries: dict[str, TaskSummary]) -> list:
    """The threshold ``--calibrate`` chose on part of the images, and how it did on the rest."""
    chosen = {k: e.calibrated for k, e in entries.items() if e.calibrated}
    if not chosen:
        return []
    c = next(iter(chosen.values()))
    goal = f"{c.target} {c.limit:g}" + (" (accuracy lost against always)" if c.target == "max-loss" else "")
    return [Heading(3, "Calibrated threshold (collab-eval calibrate)"),
            Para(f"τ chosen by Learn-then-Test for {goal} with probability at least {1 - c.delta:g}, on "
                 f"{100 * c.calib_fraction:g}% of the images (seed {c.seed}), then applied to the held-out "
                 "rest. The guarantee assumes new images are exchangeable with the calibration images. Figure: ★ the "
                 "threshold on the whole run, ☆ its outcome on the held-out part alone."),
            Table(["system", "τ", "guaranteed", "part", "images", "retransmitted", "acc", "always acc", "loss (points)",
                   "bytes", "always bytes", "GFLOPs"],
                  [[k, tau(c.tau), "yes" if c.feasible else "no: safe end", part, str(o.images),
                    pct(o.retransmitted) + "%", pct(o.accuracy), pct(o.always_accuracy), f"{100 * o.loss:+.1f}",
                    nbytes(o.bytes), nbytes(o.always_bytes), gflops(o.flops)]
                   for k, c in chosen.items() for part, o in (("calibration", c.calib), ("held-out", c.test)) if o])]


def thin(points: list[Point]) -> list[Point]:
    chosen = {min(range(len(points)), key=lambda i: (abs(points[i].rate - r), i)) for r in RATE_ROWS}
    return [points[i] for i in sorted(chosen)]


def derived(p: Point | None) -> str:
    return "–" if not p else f"{pct(p.accuracy)} / {nbytes(p.bytes)} / {gflops(p.flops)} / {pct(p.rate)}%"


def examples(view: TaskView) -> list[list[str]]:
    changed = sorted(range(len(view.records)),
                     key=lambda i: (view.acc2[i] == view.acc1[i], view.acc2[i] < view.acc1[i], i))
    rows = []
    for i in changed[:EXAMPLES]:
        r = view.records[i]
        rows.append([str(r.doc_id), clip(r.doc.get("question", r.question)), ground_truth(r.doc),
                     clip(r.answer_stage1), tau(view.samples.score[i]), clip(r.answer_stage2),
                     f"{view.acc1[i]:.2f} → {view.acc2[i]:.2f}"])
    return rows


def clip(text, limit: int = 200) -> str:
    text = str(text or "")
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text) - limit} more characters)"


def ground_truth(doc: dict) -> str:
    if isinstance(doc.get("answers"), list):
        return ", ".join(f"{a} ×{n}" for a, n in Counter(map(str, doc["answers"])).most_common(3))
    return str(doc.get("answer", "–"))


# ----- renderers ----------------------------------------------------------------------
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def visible(text: str) -> str:
    """Control characters as \\uXXXX and line breaks as ⏎, so every output is seen as it is."""
    text = CONTROL.sub(lambda m: f"\\u{ord(m[0]):04x}", str(text))
    return text.replace("\r\n", "⏎").replace("\n", "⏎").replace("\r", "⏎")


def md_escape(text: str) -> str:
    """Escaped for Markdown: no HTML passes through, no table or emphasis syntax either."""
    text = html.escape(visible(text), quote=False)
    return re.sub(r"([\\`*_\[\]{}|#!~])", r"\\\1", text)


def html_escape(text: str) -> str:
    return html.escape(visible(text), quote=True)


def to_markdown(blocks: list) -> str:
    out = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"{'#' * b.level} {md_escape(b.text)}")
        elif isinstance(b, Para):
            out.append(md_escape(b.text))
        elif isinstance(b, Table):
            out.append("| " + " | ".join(map(md_escape, b.headers)) + " |")
            out[-1] += "\n|" + "---|" * len(b.headers)
            out[-1] += "".join("\n| " + " | ".join(map(md_escape, row)) + " |" for row in b.rows)
        elif isinstance(b, Figure):
            out.append(f"![{md_escape(b.alt)}]({b.filename})")
    return "\n\n".join(out) + "\n"


STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.85em}th,td{border:1px solid #ccc;padding:.25em .5em;
text-align:left;vertical-align:top;white-space:pre-wrap;word-break:break-word;max-width:28em}th{background:#f3f3f3}
img{max-width:100%}p{line-height:1.45}"""


def to_html(blocks: list) -> str:
    out = ['<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
           "<title>collab-eval report</title>", f"<style>{STYLE}</style></head><body>"]
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"<h{b.level}>{html_escape(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            out.append(f"<p>{html_escape(b.text)}</p>")
        elif isinstance(b, Table):
            out.append("<table><thead><tr>" + "".join(f"<th>{html_escape(h)}</th>" for h in b.headers)
                       + "</tr></thead><tbody>")
            out += ["<tr>" + "".join(f"<td>{html_escape(c)}</td>" for c in row) + "</tr>" for row in b.rows]
            out.append("</tbody></table>")
        elif isinstance(b, Figure):
            data = base64.b64encode(b.png).decode("ascii")
            out.append(f'<figure><img alt="{html_escape(b.alt)}" src="data:image/png;base64,{data}"></figure>')
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write(summary: Summary, out_dir, browser_images: int = 12) -> dict[str, Path]:
    """Write report.md, report.html, summary.json and the figures into ``out_dir`` (``browser_images``:
    pictures for that many samples per category in report.html's sample browser)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    blocks = document(summary)
    paths = {"markdown": out_dir / "report.md", "html": out_dir / "report.html", "summary": out_dir / "summary.json"}
    for b in blocks:
        if isinstance(b, Figure):
            (out_dir / b.filename).write_bytes(b.png)
    paths["markdown"].write_text(to_markdown(blocks), encoding="utf-8")
    from collab_eval.analysis import page  # report.html: the template, interactive curves, the sample browser
    paths["html"].write_text(page.render(summary, blocks, images_per_category=browser_images), encoding="utf-8")
    summary.write(paths["summary"])
    return paths

