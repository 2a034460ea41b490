"""report.html: the report's blocks, interactive trade-off curves and the sample browser, from one
Jinja template (``templates/report.html.j2``), self-contained (plotly's JavaScript embedded, images
as data URIs): it opens from disk, offline, without a server.

- The trade-off figures (accuracy against bytes, GFLOPs and, with ``--link``, mean latency) are
  plotly figures: every point of a gate's curve tells its τ, share retransmitted, accuracy,
  bytes, GFLOPs (and latency per link); a click on a system in the legend shows or hides all its
  curves; the random band, the random expectation and the oracle are drawn as in the PNGs, which
  report.md keeps (and which stay beside the page for papers).
- The sample browser (``browser``): per task and run, the samples of each category with their
  counts; each sample's question, target, answers and scores, and for the first samples of each
  category the pictures (``sample_images``: the global image as received, the original with the
  RoI box, the crop as sent, the locator's map where recorded). The samples are paged in the
  browser from JSON embedded in the page (``PAGE_SIZE`` per page), so a task of 9,000 samples is
  one list of rows, not 9,000 DOM cards.
"""
from __future__ import annotations

import html
import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import jinja2
import markupsafe

from collab_eval.analysis import plots
from collab_eval.analysis.browser import CATEGORIES, IMAGES_PER_CATEGORY, LABELS, BrowserRun, browser_runs
from collab_eval.analysis.sample_images import Pictures

PAGE_SIZE = 25  # samples per page of the browser
TEMPLATES = Path(__file__).parent / "templates"


# ----- hover text: what a point of a curve tells ------------------------------------------------
def tau_text(tau) -> str:
    if tau is None:
        return "–"
    t = float(tau)
    return "+∞" if t == math.inf else "−∞" if t == -math.inf else f"{t:.6g}"


def hover(kind: str, p, latency: dict | None = None) -> str:
    """A point's hover text: τ (gate points), retransmitted, accuracy, bytes, GFLOPs, latency per link."""
    lines = [html.escape(kind) + (f" τ={tau_text(p.tau)}" if getattr(p, "tau", None) is not None else "")]
    lines += [f"retransmitted {100 * p.rate:.2f}%", f"accuracy {100 * p.accuracy:.3f}%", f"bytes {p.bytes:,.1f}",
              f"GFLOPs {p.flops / 1e9:.6g}"]
    for spec, lat in (latency or {}).items():
        lines.append(f"latency {html.escape(spec)}: mean {lat.mean:.4f} s, p95 {lat.p95:.4f} s")
    return "<br>".join(lines)


def latency_of(profiles: dict, curve: str, i: int | None = None) -> dict:
    """Per link spec, the latency point of ``curve`` (index ``i`` for a list), when it lines up."""
    out = {}
    for spec, prof in profiles.items():
        value = getattr(prof, curve, None)
        if isinstance(value, list):
            value = value[i] if i is not None and len(value) > i else None
        if value is not None:
            out[spec] = value
    return out


# ----- the interactive figure of a task ---------------------------------------------------------
@dataclass(frozen=True)
class Panel:
    """One cost axis: ``bytes``, ``flops`` (shown in GFLOPs) or the mean latency under one link."""
    cost: str
    title: str
    scale: float = 1.0
    link: str | None = None

    def x(self, point, latency: dict | None = None):
        """The point's x on this axis (None when the point has no latency under the link)."""
        if self.link is None:
            return getattr(point, self.cost) * self.scale
        if hasattr(point, "mean"):  # a latency point itself
            return point.mean
        lat = (latency or {}).get(self.link)
        return None if lat is None else lat.mean


def panels_of(entries: dict) -> list[Panel]:
    specs = list(dict.fromkeys(spec for e in entries.values() for spec in (e.latency or {})))
    return [Panel("bytes", "mean bytes sent per sample"), Panel("flops", "mean GFLOPs per sample", 1e-9),
            *(Panel("latency", f"mean latency per sample, s ({spec})", link=spec) for spec in specs)]


def line(go, name: str, kind: str, xs, points, text, **style):
    """A curve whose points hover with ``text`` (plotly reads it as HTML: names from runs are escaped)."""
    return go.Scatter(x=xs, y=[100 * p.accuracy for p in points], text=text, meta=dict(kind=kind, system=name),
                      hovertemplate="%{text}<extra>" + html.escape(name) + "</extra>", **style)


def system_traces(go, panel: Panel, name: str, colour: str, e) -> list:
    """The traces of one system on one panel: gate, random band and expectation, oracle, ends, other runs."""
    traces, f, profiles = [], e.from_always, e.latency or {}
    profile = profiles.get(panel.link) if panel.link else None
    if f is not None:
        gated = f.curves.gated
        lat = [latency_of(profiles, "gated", i) for i in range(len(gated))]
        xs = [panel.x(p, lat[i]) for i, p in enumerate(gated)]
        if all(x is not None for x in xs):
            # Markers up to plots.MARKERS_UP_TO points, as the PNGs (thousands of SVG markers load slowly);
            # every point still hovers.
            traces.append(line(go, name, "gated", xs, gated, [hover("gate", p, lat[i]) for i, p in enumerate(gated)],
                               mode="lines+markers" if len(gated) <= plots.MARKERS_UP_TO else "lines",
                               marker=dict(size=5), line=dict(color=colour)))
        if f.curves.random_band and panel.link is None:
            band = f.curves.random_band
            xs = [getattr(b, panel.cost) * panel.scale for b in band]
            traces.append(go.Scatter(x=xs + xs[::-1], y=[100 * b.hi for b in band] + [100 * b.lo for b in band][::-1],
                                     fill="toself", fillcolor=colour, opacity=0.15, line=dict(width=0),
                                     hoverinfo="skip", meta=dict(kind="random_band", system=name)))
        random = getattr(profile, "random", []) if panel.link else f.curves.random
        if random:
            traces.append(line(go, name, "random", [panel.x(p) for p in random], random,
                               [f"random p={p.rate:g}<br>accuracy {100 * p.accuracy:.3f}%" for p in random],
                               mode="lines", line=dict(color=colour, dash="dash", width=1)))
        oracle = getattr(profile, "oracle_curve", []) if panel.link else f.curves.oracle
        if oracle:
            traces.append(line(go, name, "oracle", [panel.x(p) for p in oracle], oracle,
                               [f"oracle<br>retransmitted {100 * p.rate:.2f}%<br>accuracy {100 * p.accuracy:.3f}%"
                                for p in oracle], mode="lines", line=dict(color=colour, dash="dot", width=1)))
        ends = [("never", f.never, latency_of(profiles, "never")), ("always", f.always, latency_of(profiles, "always"))]
        xs = [panel.x(p, lat) for _, p, lat in ends]
        if all(x is not None for x in xs):
            traces.append(line(go, name, "ends", xs, [p for _, p, _ in ends], [hover(k, p, lat) for k, p, lat in ends],
                               mode="markers", marker=dict(color=colour, size=10, symbol=["square", "diamond"])))
    if panel.link is None and e.points:
        traces.append(line(go, name, "runs", [panel.x(r.point) for r in e.points], [r.point for r in e.points],
                           [hover(r.label or r.policy, r.point) for r in e.points],
                           mode="markers", marker=dict(color=colour, size=11, symbol="x")))
    return traces


def tradeoff_figure(task: str, entries: dict) -> dict:
    """The task's trade-off figure as plotly JSON: one panel per cost, one legend entry per system
    (a click shows or hides every curve of that system)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels = panels_of(entries)
    fig = make_subplots(rows=1, cols=len(panels), shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=[p.title for p in panels])
    colour = plots.colours(entries)
    accuracies = []
    for name, e in entries.items():
        if e.from_always is not None:
            accuracies += [p.accuracy for p in e.from_always.curves.gated]
        accuracies += [r.point.accuracy for r in e.points]
        first = True
        for col, panel in enumerate(panels, start=1):
            for trace in system_traces(go, panel, name, colour[name], e):
                trace.update(legendgroup=name, name=html.escape(name), showlegend=first)
                first = False
                fig.add_trace(trace, row=1, col=col)
    lo, hi = plots.accuracy_limits(accuracies)
    fig.update_yaxes(range=[100 * lo, 100 * hi])
    fig.update_yaxes(title_text="accuracy, %", row=1, col=1)
    for col in range(1, len(panels) + 1):
        axis = "x" if col == 1 else f"x{col}"
        values = [x for trace in fig.data if trace.xaxis == axis and trace.fill != "toself"
                  for x in (trace.x or ()) if x is not None]
        fig.update_xaxes(type="log" if plots.log_scale(values) else "linear", row=1, col=col)
    fig.update_layout(height=430, margin=dict(l=60, r=20, t=60, b=40), hovermode="closest",
                      legend=dict(orientation="h", y=-0.15, groupclick="togglegroup"),
                      title=dict(text=f"{task}: accuracy against cost (click a system to show or hide it)",
                                 font=dict(size=14)))
    return json.loads(fig.to_json())


# ----- the page ------------------------------------------------------------------------------
def browser_json(run: BrowserRun) -> str:
    """The run's samples as the page's script reads them."""
    data = {"key": run.key, "task": run.task, "system": run.system, "run": run.run, "policy": run.policy,
            "counts": run.counts, "samples": [asdict(s) for s in run.samples]}
    return script_json(data)


def script_json(data) -> str:
    """JSON to embed in a ``<script type="application/json">``: ``<``, ``>`` and ``&`` as \\u escapes,
    so no text from a run (a model's ``</script>``) can end the script or open markup."""
    text = json.dumps(data, allow_nan=False, separators=(",", ":"), default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    from collab_eval.analysis.report import html_escape
    # Text from runs escaped as report.md's HTML always was (control characters shown as \\uXXXX).
    env.filters["text"] = lambda value: markupsafe.Markup(html_escape(value))
    return env


def render(summary, blocks: list, warn=None, images_per_category: int = IMAGES_PER_CATEGORY) -> str:
    """report.html's text."""
    import base64

    import plotly.offline

    from collab_eval.analysis.report import Figure, Heading, Para, Table
    from collab_eval.analysis.runs import warn_on_stderr
    from collab_eval.analysis.summary import system_labels

    labels = system_labels(summary)
    tasks = sorted({t for s in summary.systems.values() for t in s.tasks})
    figures = {}
    for task in tasks:
        entries = {labels[name]: s.tasks[task] for name, s in summary.systems.items()
                   if task in s.tasks and not s.tasks[task].unscored}
        if entries:
            figures[f"{slug(task)}_tradeoff.png"] = (task, tradeoff_figure(task, entries))
    include = tuple(getattr(summary.scorer, "include_paths", ()) or ())
    pictures = Pictures(include, warn or warn_on_stderr) if images_per_category > 0 else None
    runs = browser_runs(summary, labels, pictures, images_per_category) if summary.read_runs else []
    items = []
    for b in blocks:
        if isinstance(b, Heading):
            items.append({"kind": "heading", "level": b.level, "text": b.text})
        elif isinstance(b, Para):
            items.append({"kind": "para", "text": b.text})
        elif isinstance(b, Table):
            items.append({"kind": "table", "headers": b.headers, "rows": b.rows})
        elif isinstance(b, Figure) and b.filename in figures:
            task, fig = figures[b.filename]
            items.append({"kind": "plot", "id": "plot-" + slug(task), "task": task, "figure": script_json(fig),
                          "png": b.filename, "alt": b.alt})
        elif isinstance(b, Figure):
            items.append({"kind": "figure", "alt": b.alt, "filename": b.filename,
                          "data": base64.b64encode(b.png).decode("ascii")})
    return environment().get_template("report.html.j2").render(
        items=items, plotly_js=plotly.offline.get_plotlyjs(), runs=runs, categories=CATEGORIES, labels=LABELS,
        browser=[browser_json(r) for r in runs], page_size=PAGE_SIZE, images_per_category=images_per_category)
