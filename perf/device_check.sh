#!/usr/bin/env bash
# One device call: GPU tests, then the kernel benchmark (its JSON is written after each length).
#   LENGTHS="32768 131072 262144" bash perf/device_check.sh
#   TESTS=tests/test_gpu_kernels.py bash perf/device_check.sh     (kernel tests only)
set -o pipefail
export PYTHONPATH=$PWD:$PYTHONPATH PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv
python3 -m pytest -m gpu -q --tb=short ${TESTS:-tests} 2>&1 | tee "$OUT/gpu_tests.log" | grep -E "passed|failed|FAILED|Error|assert" | head -40
python3 perf/bench_kernels.py --lengths ${LENGTHS:-32768 131072} --rep-ms ${REP_MS:-1000} --out "$OUT/kernels.json" 2>&1 \
  | tee "$OUT/bench_kernels.log" | grep -vE "DEBUG|W1123" | tail -60
