#!/usr/bin/env bash
# Regenerate a committed report from fresh runs, one per policy, then collab-eval report over all:
#   reports/regenerate.sh NAME CHECKPOINT TASKS TAU
# writes reports/NAME/ (the report, its figures and summary.json). Run from the repository root
# with the venv active; review the diff before committing it (README: refreshing the baseline).
set -euo pipefail
NAME=$1 CHECKPOINT=$2 TASKS=$3 TAU=$4
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
RUNS=${RUNS:-out/$NAME-example}
rm -rf "$RUNS" && mkdir -p "$RUNS"
for policy in always never tiles random,rate=0.5,seed=0 "threshold,threshold=$TAU"; do
  name=${policy%%,*}
  lmms-eval --model collab_llava \
    --model_args "pretrained=$CHECKPOINT,policy=$policy,records_dir=$RUNS/$name/records" \
    --tasks "$TASKS" --include_path "$(collab-eval tasks-dir)" \
    --output_path "$RUNS/$name" --log_samples --verbosity DEBUG > "$RUNS/$name.log" 2>&1
  ls "$RUNS/$name"/*/*_results.json > /dev/null  # lmms-eval exits 0 on errors: check it wrote results
done
rm -rf "reports/$NAME"/*.png "reports/$NAME"/report.* "reports/$NAME"/summary.json
collab-eval report "$RUNS"/always "$RUNS"/threshold "$RUNS"/random "$RUNS"/never "$RUNS"/tiles \
  --out "reports/$NAME"
