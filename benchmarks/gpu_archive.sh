#!/usr/bin/env bash
# Archive throughput on a GPU, end to end (read to written outputs): `mcgr infer` base and TT-GPR
# beside the pydicom + MONAI bf16 loop, with the GPU's busy fraction (nvidia-smi utilization.gpu
# sampled every 100 ms while each side runs) and peak GPU memory. Targets (issue 17): base >= 5
# images/s, TT-GPR >= 3 images/s on one H100, GPU busy > 50 % of the wall time.
#   usage: bash benchmarks/gpu_archive.sh OUTDIR [--device cpu]   (cpu: the dry run of this script)
# Budget: ~3 min on an H100 with the defaults (N=16 full-field DICOMs, one rep); N, REPS and
# THREADS, SIZE ("H W") and PEER_BATCH (the MONAI sw_batch_size: 16 on a GPU, 4 on a CPU) override;
# the CPU dry run: N=1 SIZE="768 640" bash benchmarks/gpu_archive.sh /tmp/dry --device cpu
set -uo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$REPO/benchmarks/results/gpu-archive}
DEVICE=cuda
if [ "${2:-}" = "--device" ]; then DEVICE=${3:-cuda}; fi
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
t0=$(date +%s)
step() { echo "== [$(( $(date +%s) - t0 ))s] $*"; }

if [ "$DEVICE" = "cuda" ]; then
  step "device"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
  if ! python3 -c "import mcgr._C" 2>/dev/null; then
    CAP=$(python3 -c "import torch; a,b=torch.cuda.get_device_capability(); print(f'{a}{b}')")
    step "build for sm_$CAP"
    export MCGR_CUDA_ARCHS="$CAP" MCGR_ENABLE_CUDA=ON
    python3 -m pip install -q --no-build-isolation --no-deps --target /tmp/mcgr-site "$REPO" > "$OUT/build.log" 2>&1 \
      || { tail -50 "$OUT/build.log"; echo "BUILD FAILED"; exit 1; }
    export PYTHONPATH=/tmp/mcgr-site:$REPO${PYTHONPATH:+:$PYTHONPATH}
  fi
  SAMPLE=--gpu-sample
  THREADS=${THREADS:-$(nproc)}
  PEER_BATCH=${PEER_BATCH:-16}
else
  SAMPLE=
  THREADS=${THREADS:-1}
  PEER_BATCH=${PEER_BATCH:-4}
fi
export MCGR_GIT_REV=${MCGR_GIT_REV:-$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)}
cd "$REPO"
step "archive: N=${N:-16} DICOMs of ${SIZE:-3328 2560} px, $DEVICE, $THREADS CPU threads"
timeout ${MCGR_GPU_ARCHIVE_S:-420} python3 -m benchmarks.bench_archive --device "$DEVICE" --n "${N:-16}" --reps "${REPS:-1}" \
  --threads "$THREADS" --sides peer,base,ttgpr --peer-batch "$PEER_BATCH" ${SIZE:+--size $SIZE} $SAMPLE --json "$OUT/archive.json" 2>&1 \
  | grep -v "^mcgr infer:" | tee "$OUT/archive.log"
step "done"
