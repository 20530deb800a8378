#!/usr/bin/env bash
# One device call: GPU tests, then the kernel benchmark. Usage: bash perf/device_check.sh [lengths...]
set -o pipefail
export PYTHONPATH=$PWD:$PYTHONPATH PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv
python3 -m pytest -m gpu -q -x tests 2>&1 | tee "$OUT/gpu_tests.log" | tail -25
python3 perf/bench_kernels.py --lengths ${LENGTHS:-32768 131072} --out "$OUT/kernels.json" 2>&1 | tee "$OUT/bench_kernels.log"
