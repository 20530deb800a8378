#!/usr/bin/env bash
set -o pipefail
export PYTHONPATH=$PWD:$PYTHONPATH PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pytest -m gpu -q tests 2>&1 | tee "$OUT/gpu_tests.log" | grep -E "passed|failed|FAILED|Error" | head -30
python3 perf/debug_block_sparse.py 2>&1 | tee "$OUT/debug_bs.log" | grep -v DEBUG | tail -20
python3 perf/tune_kernels.py --seq-len ${S:-131072} 2>&1 | tee "$OUT/tune.log" | grep -vE "DEBUG|W1123" | tail -60
