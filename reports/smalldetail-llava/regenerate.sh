#!/usr/bin/env bash
# Regenerate this report and the CI baseline (summary.json) from fresh runs of smalldetail-llava
# on the small-detail test splits: one run per policy, then collab-eval report over all of them.
# Run from the repository root with the venv active. Review the diff before committing it.
set -euo pipefail
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
RUNS=${RUNS:-out/smalldetail-example}
TASKS=smalldetail_read,smalldetail_exist
rm -rf "$RUNS"
for policy in always never tiles random,rate=0.5,seed=0 threshold,threshold=2.1; do
  name=${policy%%,*}
  lmms-eval --model collab_llava \
    --model_args "pretrained=smalldetail-llava,policy=$policy,records_dir=$RUNS/$name/records" \
    --tasks "$TASKS" --include_path "$(collab-eval tasks-dir)" \
    --output_path "$RUNS/$name" --log_samples --verbosity DEBUG > "$RUNS.$name.log" 2>&1
  ls "$RUNS/$name"/*/*_results.json > /dev/null  # lmms-eval exits 0 on errors: check it wrote results
done
rm -rf reports/smalldetail-llava/*.png reports/smalldetail-llava/report.* reports/smalldetail-llava/summary.json
collab-eval report "$RUNS"/always "$RUNS"/threshold "$RUNS"/random "$RUNS"/never "$RUNS"/tiles \
  --out reports/smalldetail-llava
