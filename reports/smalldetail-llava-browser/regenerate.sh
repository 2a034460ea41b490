#!/usr/bin/env bash
# The sample browser's example: smalldetail-llava on the small-detail test splits, an always run and a
# threshold run (tau=0.5 nats), both with record_map=true so the browser shows the locator's map; then
# the report (pictures for the first 4 samples of each category) and a screenshot of each view of
# report.html in headless Chromium. Run from the repository root, venv active (about 2 minutes on a CPU).
set -euo pipefail
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
NAME=smalldetail-llava-browser
RUNS=${RUNS:-out/$NAME-example}
rm -rf "$RUNS" && mkdir -p "$RUNS"
for policy in always threshold,threshold=0.5; do
  run="$RUNS/${policy%%,*}"
  lmms-eval --model collab_llava \
    --model_args "pretrained=smalldetail-llava,policy=$policy,record_map=true,records_dir=$run/records" \
    --tasks smalldetail_read,smalldetail_exist --include_path "$(collab-eval tasks-dir)" \
    --output_path "$run" --log_samples --verbosity DEBUG > "$run.log" 2>&1
  ls "$run"/*/*_results.json > /dev/null  # lmms-eval exits 0 on errors: check it wrote results
done
rm -rf "reports/$NAME"/*.png "reports/$NAME"/report.* "reports/$NAME"/summary.json
collab-eval report "$RUNS/always" "$RUNS/threshold" --out "reports/$NAME" --browser-images 4
reports/screenshots.sh "reports/$NAME/report.html"
