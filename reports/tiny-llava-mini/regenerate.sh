#!/usr/bin/env bash
# The plumbing example: the random tiny LLaVA on the two offline fixtures, five policies.
# Run from the repository root, venv active.
exec "$(dirname "$0")/../regenerate.sh" tiny-llava-mini collab_textvqa_mini,collab_pope_mini 5.555 collab_llava=tiny-llava
