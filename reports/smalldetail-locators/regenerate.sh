#!/usr/bin/env bash
# The locator comparison: the three trained families (smalldetail-llava, -qwen2-vl,
# -instructblip), each with every built-in locator (rel_att, grad_att, pure_grad, center),
# one always run per cell on the small-detail test splits (150 + 150 samples); then
# collab_eval.lab.smalldetail_locators over their records writes this directory.
# highres is left out: every smalldetail original is at most 1024 px a side, so ViCrop's
# tiling gives one tile (the global image) and highres=true changes nothing (docs/locators.md).
#   reports/smalldetail-locators/regenerate.sh                # runs, then the report
#   reports/smalldetail-locators/regenerate.sh --report-only  # the report from existing runs
# Besides this comparison, collab-eval report over the same runs writes report/: each system is
# the checkpoint with its locator, labelled by it (docs/report-and-check.md, systems).
# Runs go to $RUNS (default out/smalldetail-locators). Run from the repository root with the
# venv active.
set -euo pipefail
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
RUNS=${RUNS:-out/smalldetail-locators}
OUT=reports/smalldetail-locators
LOCATORS=${LOCATORS:-"rel_att center grad_att pure_grad"}
if [ "${1:-}" != "--report-only" ]; then
  for family in llava qwen2_vl instructblip; do
    checkpoint=smalldetail-${family//_/-}
    for locator in $LOCATORS; do
      run="$RUNS/$checkpoint/$locator"
      rm -rf "$run" && mkdir -p "$run"
      lmms-eval --model "collab_$family" \
        --model_args "pretrained=$checkpoint,policy=always,locator=$locator,records_dir=$run/records" \
        --tasks smalldetail_read,smalldetail_exist --include_path "$(collab-eval tasks-dir)" \
        --output_path "$run" --log_samples --verbosity DEBUG > "$run.log" 2>&1
      ls "$run"/*/*_results.json > /dev/null  # lmms-eval exits 0 on errors: check it wrote results
    done
  done
fi
rm -rf "$OUT"/*.png "$OUT"/README.md "$OUT"/locators.json "$OUT"/report
python -m collab_eval.lab.smalldetail_locators "$RUNS"/*/*/ --out "$OUT"
collab-eval report "$RUNS"/*/*/ --out "$OUT/report"
