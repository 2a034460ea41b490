#!/usr/bin/env bash
# This report and the CI baseline: the trained families (smalldetail-llava, -qwen2-vl,
# -instructblip, -llava-next, -qwen2-5-vl) through their adapters on the small-detail test splits, five policies each
# (threshold tau=0.5 nats: between the sure and the unsure stage-1 scores of both tasks; an
# existence answer is at most ln 2 = 0.69 unsure). smalldetail-llava-next's never is the paper's HD
# baseline. Run from the repository root, venv active.
exec "$(dirname "$0")/../regenerate.sh" smalldetail-families smalldetail_read,smalldetail_exist 0.5 \
  collab_llava=smalldetail-llava collab_qwen2_vl=smalldetail-qwen2-vl collab_instructblip=smalldetail-instructblip \
  collab_llava_next=smalldetail-llava-next collab_qwen2_5_vl=smalldetail-qwen2-5-vl
