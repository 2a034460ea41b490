#!/usr/bin/env bash
# GPU smoke test: the collab adapters on their tiny offline checkpoints, end to end
# through the lmms-eval command line on CUDA (--limit 4 on the local TextVQA and POPE
# tasks), one result line per adapter; then the timing benchmark on CUDA (collab_llava
# never/always against lmms-eval's llava_hf on geometry-llava, LLaVA-1.5's 576-token image
# geometry: wall-time ratios and each stage's peak allocated memory). Needs no internet:
# the checkpoints are built locally and the tasks read tasks/data/.
#
#   tests/gpu_smoke.sh                         # from the repo root; uses .venv/ if present
#   DEVICE=cpu DTYPE=float32 tests/gpu_smoke.sh   # the same run without a GPU
#
# Environment: DEVICE (cuda), DTYPE (bfloat16, as a real deployment would run; auto,
# float16, float32), VENV (.venv), SMOKE_OUT (a new temporary directory), TIMING_ROUNDS
# (3; 0 skips the timing benchmark).
# Exit status: 0 when every adapter ran all samples without a failed one and the timing
# benchmark ran, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

VENV=${VENV:-.venv}
BIN=""
[ -x "$VENV/bin/lmms-eval" ] && BIN="$VENV/bin/"
DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-bfloat16}
OUT=${SMOKE_OUT:-$(mktemp -d -t collab-gpu-smoke-XXXXXX)}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export COLLAB_EVAL_CACHE=${COLLAB_EVAL_CACHE:-$OUT/checkpoints}
TASKS=collab_textvqa_mini,collab_pope_mini
LIMIT=4

"${BIN}python" - "$DEVICE" <<'EOF' || exit 1
import sys, torch
device = sys.argv[1]
if device.startswith("cuda") and not torch.cuda.is_available():
    sys.exit(f"gpu_smoke: DEVICE={device} but torch {torch.__version__} sees no CUDA device")
name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "cpu"
print(f"gpu_smoke: torch {torch.__version__} on {device} ({name})")
EOF

status=0
# adapter, tiny checkpoint, policy (one that exercises stage 2; tiles: five images)
for run in "collab_llava tiny-llava always" "collab_llava_next tiny-llava-next always" "collab_qwen2_vl tiny-qwen2-vl tiles" "collab_instructblip tiny-instructblip always"; do
    read -r model checkpoint policy <<<"$run"
    dir="$OUT/$model"
    mkdir -p "$dir"
    started=$(date +%s)
    "${BIN}lmms-eval" --model "$model" \
        --model_args "pretrained=$checkpoint,policy=$policy,device=$DEVICE,dtype=$DTYPE,records_dir=$dir/records" \
        --tasks "$TASKS" --include_path tasks --output_path "$dir" --log_samples --limit "$LIMIT" \
        --verbosity DEBUG >"$dir/lmms-eval.log" 2>&1
    rc=$?
    seconds=$(( $(date +%s) - started ))
    # lmms-eval can exit 0 after an exception: judge by what it wrote.
    "${BIN}python" - "$model" "$policy" "$dir" "$rc" "$seconds" "$(( LIMIT * 2 ))" <<'EOF' || status=1
import glob, json, sys
model, policy, out, rc, seconds, expected = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
records = [json.loads(line) for path in glob.glob(f"{out}/records/*.jsonl") for line in open(path) if line.strip()]
results = glob.glob(f"{out}/**/*_results.json", recursive=True)
failed = [r for r in records if r["error"]]
ok = rc == 0 and results and len(records) == expected and not failed
line = f"{model:<20} {'OK  ' if ok else 'FAIL'} policy={policy} samples={len(records)}/{expected} failed={len(failed)}"
if records:
    n = len(records)
    line += (f" bytes/sample={sum(r['bytes_total'] for r in records) / n:.0f}"
             f" GFLOP/sample={sum(r['flops_total'] for r in records) / n / 1e9:.3f}"
             f" retransmitted={sum(r['retransmitted'] for r in records)}/{n}")
line += f" {seconds}s"
if failed:
    line += f" first error: {failed[0]['error'][:200]}"
if not ok:
    line += f" (exit {rc}; log: {out}/lmms-eval.log)"
print(line)
sys.exit(0 if ok else 1)
EOF
done

ROUNDS=${TIMING_ROUNDS:-3}
if [ "$ROUNDS" -gt 0 ]; then
    echo "gpu_smoke: timing benchmark on $DEVICE ($DTYPE), $ROUNDS rounds"
    # Its figures go to stdout with lmms-eval's log lines ("<date> | LEVEL | ..."): keep the figures.
    "${BIN}python" -m collab_eval.lab.timing --device "$DEVICE" --dtype "$DTYPE" --rounds "$ROUNDS" \
        --records-dir "$OUT/timing/records" >"$OUT/timing.txt" 2>"$OUT/timing.log" \
        || { echo "timing FAIL (log: $OUT/timing.log)"; status=1; }
    grep -v '^[0-9-]* [0-9:.]* | ' "$OUT/timing.txt"
fi
exit $status
