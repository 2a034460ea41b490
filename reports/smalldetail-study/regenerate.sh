#!/usr/bin/env bash
# This report: the shipped study file `smalldetail` (collab_eval/studies/smalldetail.yaml) run by
# `collab-eval study`: the three trained families (smalldetail-llava, -qwen2-vl, -instructblip)
# x policies always and tiles x codecs png, jpeg:90 and jpeg:50 on the small-detail test splits,
# and the HD baseline smalldetail-llava-next with never at each codec: 21 lmms-eval runs of 300
# samples, then the report over all of them (with the codec section).
# The runs go to $RUNS (default out/smalldetail-study). Run again after an interruption: complete
# cells are skipped, the interrupted one resumed. For fresh runs, delete $RUNS first.
# Run from the repository root with the venv active; review the diff before committing it.
set -euo pipefail
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
RUNS=${RUNS:-out/smalldetail-study}
collab-eval study smalldetail --out "$RUNS"
rm -rf reports/smalldetail-study/*.png reports/smalldetail-study/report.* reports/smalldetail-study/summary.json
cp "$RUNS"/report/* reports/smalldetail-study/
