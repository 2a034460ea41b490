#!/usr/bin/env bash
# This report and the CI baseline: smalldetail-llava on the small-detail test splits, five policies
# (threshold tau=2.1, near the read task's median score). Run from the repository root, venv active.
exec "$(dirname "$0")/../regenerate.sh" smalldetail-llava smalldetail-llava smalldetail_read,smalldetail_exist 2.1
