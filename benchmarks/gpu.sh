#!/usr/bin/env bash
# Run the benchmarks on a CUDA machine (random weights, synthetic data, no network)
# and collect one markdown results file. Meant to finish in under 8 minutes on an H100.
#
#   bash benchmarks/gpu.sh            # results in ./gpu_results
#   OUT=/some/dir bash benchmarks/gpu.sh
#
# open_clip (and ftfy, wcwidth) need not be installed: if `import open_clip` fails, the
# wheels in ./wheels are installed into a private folder (no index, no dependencies):
#   .venv/bin/pip download --no-deps -d wheels open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4
# wheels/ is git-ignored: a remote runner must be told to copy it along.
set -euo pipefail

cd "$(dirname "$0")/.."
OUT="${OUT:-./gpu_results}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="$(mktemp -d)"
LOG="$OUT/gpu.log"
RESULTS="$OUT/results.md"
export PYTHONUNBUFFERED=1
START=$SECONDS
: >"$LOG"

say() { echo "$@" | tee -a "$LOG"; }

say "== environment ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
"$PYTHON" - <<'EOF' 2>&1 | tee -a "$LOG"
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "cudnn", torch.backends.cudnn.version())
print("cuda available:", torch.cuda.is_available(),
      "device:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
EOF
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | tee -a "$LOG" || true

if ! "$PYTHON" -c "import open_clip" >/dev/null 2>&1; then
    if ! ls wheels/*.whl >/dev/null 2>&1; then
        say "open_clip is not installed and there is no wheels/ folder: run the pip download above and carry wheels/"
        exit 2
    fi
    say "== installing $(ls wheels/*.whl | xargs -n1 basename | tr '\n' ' ')"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" wheels/*.whl 2>&1 | tee -a "$LOG"
    export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" -c "import open_clip, feclip; print('open_clip', open_clip.__version__, 'feclip', feclip.__version__)" 2>&1 | tee -a "$LOG"

FAILED=()
# run_step NAME SECONDS COMMAND...: one benchmark under a hard time limit; a failure is recorded, not fatal
run_step() {
    local name=$1 limit=$2
    shift 2
    say ""
    say "== $name (limit ${limit}s, elapsed $((SECONDS - START))s): $*"
    local rc=0
    timeout --signal=TERM --kill-after=15 "$limit" "$@" 2>&1 | tee -a "$LOG" || rc=$?
    if [ "$rc" -ne 0 ]; then
        say "!! $name failed with exit code $rc (124: timed out)"
        FAILED+=("$name (rc $rc)")
    fi
}

# BENCH_DEVICE=cpu BENCH_QUICK=1 is a dry run of this script on a laptop (tiny sizes, no torch.compile).
DEVICE="${BENCH_DEVICE:-cuda}"
if [ "${BENCH_QUICK:-0}" = 1 ]; then
    OVERHEAD=(--backbones feclip-tiny --batch-sizes 1 2 --rounds 2 --warmup 0)
    ADAPTERS=(--batch 2 --grid 12 --width 64 --rounds 2 --warmup 0 --q-sweep 3 5 --conv-variants)
    TRAIN=(--backbones feclip-tiny --batch 2 --rounds 1 --warmup 0)
    PREFIX=(--backbones feclip-tiny --images 4 --batch 2 --epochs 2 --rounds 1)
    EPOCH=(--backbone feclip-tiny --images 8 --size 150 100 --batch-size 4)
else
    OVERHEAD=(--batch-sizes 1 8 --rounds 30 --warmup 3)
    ADAPTERS=(--rounds 5 --warmup 1 --min-run-time 0.02)
    TRAIN=(--rounds 10 --warmup 2)
    PREFIX=(--backbones ViT-L-14-336 --images 32 --batch 16 --epochs 3 --rounds 1)
    EPOCH=()  # the full recipe's epoch: VisA's 2162 test images at 1500 x 1000, batch 16, amp auto
fi
run_step overhead-fp32 80 "$PYTHON" benchmarks/overhead.py --device "$DEVICE" "${OVERHEAD[@]}" --try-channels-last \
    --json "$OUT/overhead_fp32.json" --markdown "$WORK/overhead_fp32.md"
if [ "$DEVICE" = cuda ]; then  # compiling takes most of this step's time, so only the target backbone
    run_step overhead-compile 120 "$PYTHON" benchmarks/overhead.py --device "$DEVICE" "${OVERHEAD[@]}" \
        --backbones ViT-L-14-336 --compile --json "$OUT/overhead_compile.json" --markdown "$WORK/overhead_compile.md"
fi
run_step overhead-bf16 60 "$PYTHON" benchmarks/overhead.py --device "$DEVICE" "${OVERHEAD[@]}" --precision bf16 \
    --json "$OUT/overhead_bf16.json" --markdown "$WORK/overhead_bf16.md"
run_step adapters 120 "$PYTHON" benchmarks/adapters.py --device "$DEVICE" "${ADAPTERS[@]}" \
    --json "$OUT/adapters.json" --markdown "$WORK/adapters.md"
run_step train-step 80 "$PYTHON" benchmarks/train_step.py --device "$DEVICE" "${TRAIN[@]}" \
    --json "$OUT/train_step.json" --markdown "$WORK/train_step.md"
run_step prefix-cache 60 "$PYTHON" benchmarks/prefix_cache.py --device "$DEVICE" "${PREFIX[@]}" \
    --json "$OUT/prefix_cache.json" --markdown "$WORK/prefix_cache.md"
run_step full-epoch 120 "$PYTHON" benchmarks/full_epoch.py --device "$DEVICE" "${EPOCH[@]}" --quiet \
    --json "$OUT/full_epoch.json" --markdown "$WORK/full_epoch.md"

{
    echo "# GPU benchmark results"
    echo
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ); total ${SECONDS}s; $(head -n 2 "$LOG" | tail -n 1)"
    echo
    for part in overhead_fp32 overhead_compile overhead_bf16 adapters train_step prefix_cache full_epoch; do
        echo "## $part"
        echo
        if [ -f "$WORK/$part.md" ]; then cat "$WORK/$part.md"; else echo "(no result: see gpu.log)"; fi
        echo
    done
    if [ ${#FAILED[@]} -gt 0 ]; then echo "failed steps: ${FAILED[*]}"; fi
} >"$RESULTS"
grep -h -E "^(PASS|FAIL):" "$LOG" >>"$RESULTS" || true
rm -rf "$WORK"

say ""
say "== done in $((SECONDS - START))s; results in $RESULTS"
if [ ${#FAILED[@]} -gt 0 ]; then
    say "failed steps: ${FAILED[*]}"
    exit 1
fi
