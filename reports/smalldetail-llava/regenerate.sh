#!/usr/bin/env bash
# This report and the CI baseline: smalldetail-llava on the small-detail test splits, five policies
# (threshold tau=0.5 nats: between the sure (< 0.3) and the unsure stage-1 scores of both tasks; an
# existence answer is at most ln 2 = 0.69 unsure). Run from the repository root, venv active.
exec "$(dirname "$0")/../regenerate.sh" smalldetail-llava smalldetail_read,smalldetail_exist 0.5 \
  collab_llava=smalldetail-llava
