"""report.html at scale: a real ``always`` run's records replicated to N samples per task
(``report_timing.replicate``), the report written, the page's size by part, and the time headless
Chromium takes to open it and run its scripts (``--dump-dom`` wall time, less that of an empty page).

    python -m collab_eval.lab.page_timing RUN_DIR --sizes 1000,9000 [--browser-images 12]

Rough by design: one run per size, wall-clock seconds on whatever machine it is.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from collab_eval.analysis.runs import find_runs
from collab_eval.lab.report_timing import replicate
from collab_eval.records import RecordWriter


def chromium() -> str | None:
    return next((p for name in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(name))), None)


def open_seconds(page: Path) -> float:
    """Wall seconds for headless Chromium to load ``page``, run its scripts and print the DOM."""
    import os
    args = [chromium(), "--headless", "--disable-gpu", "--dump-dom", page.resolve().as_uri()]
    if os.geteuid() == 0:
        args.insert(2, "--no-sandbox")
    started = time.perf_counter()
    subprocess.run(args, capture_output=True, timeout=600, check=True)
    return time.perf_counter() - started


def parts(html: str) -> dict[str, int]:
    """Bytes of the page by part: plotly's code, the browser's data (of which pictures), the rest."""
    scripts = re.findall(r"<script>(.*?)</script>", html, re.S)
    plotly = max((len(s.encode()) for s in scripts), default=0)
    data = sum(len(m.encode()) for m in re.findall(r'class="run-data">(.*?)</script>', html, re.S))
    pictures = sum(len(m) for m in re.findall(r"data:image/[a-z]+;base64,[A-Za-z0-9+/=]+", html))
    return {"total": len(html.encode()), "plotly": plotly, "browser_data": data, "pictures": pictures}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--sizes", default="1000,9000")
    parser.add_argument("--browser-images", type=int, default=12)
    args = parser.parse_args(argv)
    from collab_eval import cli

    (run,) = [r for r in find_runs(Path(args.run_dir)) if r.policy == "always"]
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.html"
        empty.write_text("<!DOCTYPE html><title>empty</title>")
        baseline = open_seconds(empty) if chromium() else None
        for size in map(int, args.sizes.split(",")):
            records_dir = Path(tmp) / f"n{size}" / "records"
            # The run id keeps the source's adapter in front: the sample browser finds the family by it.
            run_id = f"{run.records[0].run_id.partition('-')[0]}-replica{size}"
            writer = RecordWriter(records_dir, run_id, 0)
            for record in replicate(run.records, size):
                writer.write(record.model_copy(update={"run_id": run_id}))
            out = Path(tmp) / f"n{size}" / "report"
            started = time.perf_counter()
            cli.main(["report", str(records_dir.parent), "--out", str(out), "--seeds", "0",
                      "--browser-images", str(args.browser_images)])
            report_s = time.perf_counter() - started
            page = out / "report.html"
            sizes = parts(page.read_text(encoding="utf-8"))
            opened = open_seconds(page) - baseline if baseline is not None else None
            mb = {k: f"{v / 1e6:.1f} MB" for k, v in sizes.items()}
            print(f"{size} samples per task: report {report_s:.1f} s; page {mb}; "
                  + (f"Chromium open + scripts {opened:.1f} s over an empty page" if opened is not None
                     else "no Chromium here"))


if __name__ == "__main__":
    main()
