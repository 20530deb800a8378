#!/usr/bin/env bash
# One device call: GPU tests, then the kernel benchmark. LENGTHS="32768 131072" bash perf/device_check.sh
set -o pipefail
export PYTHONPATH=$PWD:$PYTHONPATH PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv
python3 -m pytest -m gpu -q tests 2>&1 | tee "$OUT/gpu_tests.log" | grep -E "passed|failed|FAILED|Error" | head -30
python3 perf/bench_kernels.py --lengths ${LENGTHS:-32768 131072} --out "$OUT/kernels.json" 2>&1 | tee "$OUT/bench_kernels.log" | grep -vE "DEBUG|W1123" | tail -40
