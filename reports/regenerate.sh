#!/usr/bin/env bash
# Regenerate a committed report from fresh runs, one per policy and system, then collab-eval
# report over all of them:
#   reports/regenerate.sh NAME TASKS TAU ADAPTER=CHECKPOINT [ADAPTER=CHECKPOINT ...]
# writes reports/NAME/ (the report, its figures and summary.json). Run from the repository root
# with the venv active; review the diff before committing it (README: refreshing the baseline).
set -euo pipefail
NAME=$1 TASKS=$2 TAU=$3
shift 3
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
RUNS=${RUNS:-out/$NAME-example}
rm -rf "$RUNS" && mkdir -p "$RUNS"
dirs=()
for system in "$@"; do
  adapter=${system%%=*} checkpoint=${system#*=}
  for policy in always never tiles random,rate=0.5,seed=0 "threshold,threshold=$TAU"; do
    run="$RUNS/$checkpoint/${policy%%,*}"
    mkdir -p "$run"
    lmms-eval --model "$adapter" \
      --model_args "pretrained=$checkpoint,policy=$policy,records_dir=$run/records" \
      --tasks "$TASKS" --include_path "$(collab-eval tasks-dir)" \
      --output_path "$run" --log_samples --verbosity DEBUG > "$run.log" 2>&1
    ls "$run"/*/*_results.json > /dev/null  # lmms-eval exits 0 on errors: check it wrote results
    dirs+=("$run")
  done
done
rm -rf "reports/$NAME"/*.png "reports/$NAME"/report.* "reports/$NAME"/summary.json
# No pictures in the sample browser by default: a committed page stays small (8 MB, not 40, for
# 15 runs); reports/smalldetail-llava-browser/ is the example with them.
collab-eval report "${dirs[@]}" --out "reports/$NAME" --browser-images "${BROWSER_IMAGES:-0}"
