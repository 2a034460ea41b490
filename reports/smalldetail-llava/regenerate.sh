#!/usr/bin/env bash
# This report and the CI baseline: smalldetail-llava on the small-detail test splits, five policies
# (threshold tau=1.0: in the gap between the read task's sure (< 0.3) and unsure (> 1.5) stage-1
# scores, about half retransmitted). Run from the repository root, venv active.
exec "$(dirname "$0")/../regenerate.sh" smalldetail-llava smalldetail-llava smalldetail_read,smalldetail_exist 1.0
