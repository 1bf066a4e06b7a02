#!/usr/bin/env bash
# One prepared GPU check: build mcgr._C for the present GPU, run every op's backend-equality tests on
# the GPU (CUDA and Triton compiled, not interpreted), time every provider of every op, time the
# full-field pipeline, and write everything into one folder. Budget: under 8 minutes on an H100.
#   usage: bash benchmarks/gpu_check.sh OUTDIR
set -uo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$REPO/benchmarks/results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
t0=$(date +%s)
step() { echo "== [$(( $(date +%s) - t0 ))s] $*"; }

step "device"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
CAP=$(python3 -c "import torch; a,b=torch.cuda.get_device_capability(); print(f'{a}{b}')")
step "build for sm_$CAP"
export MCGR_CUDA_ARCHS="$CAP" MCGR_ENABLE_CUDA=ON
python3 -m pip install -q --no-build-isolation --no-deps --target /tmp/mcgr-site "$REPO" > "$OUT/build.log" 2>&1 \
  || { tail -50 "$OUT/build.log"; echo "BUILD FAILED"; exit 1; }
export PYTHONPATH=/tmp/mcgr-site:$REPO${PYTHONPATH:+:$PYTHONPATH}
cd /tmp
python3 -m mcgr.info --json > "$OUT/info.json"; python3 -m mcgr.info | head -20

step "backend equality on the GPU"
timeout ${MCGR_GPU_TEST_S:-150} python3 -m pytest "$REPO/tests/ops" -q -x -p no:cacheprovider -o addopts="" -k "(cuda or triton) and not native_kernel_checks" \
  2>&1 | tee "$OUT/tests.log" | tail -25

step "op benchmarks (every provider, one JSON + latest.md + latest.png; run from /tmp so the built mcgr wins)"
export MCGR_GIT_REV=${MCGR_GIT_REV:-$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)}
(timeout ${MCGR_GPU_BENCH_S:-180} python3 -m benchmarks.run_all --device cuda \
  --providers ref,compiled,triton,cuda --reps 20 --compile-budget ${MCGR_GPU_COMPILE_S:-60} --out "$OUT") 2>&1 \
  | tee -a "$OUT/bench.log" | grep -E "^\||^--|wrote" || true

step "pipeline"
if [ -f "$REPO/benchmarks/bench_pipeline.py" ]; then
  timeout ${MCGR_GPU_PIPE_S:-120} python3 -m benchmarks.bench_pipeline --device cuda --variants ${MCGR_GPU_PIPE_VARIANTS:-default,tuned} --json "$OUT/bench_pipeline.json" 2>&1 \
    | tee "$OUT/pipeline.log" | tail -30
fi
step "done"
