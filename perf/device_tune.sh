#!/usr/bin/env bash
set -o pipefail
export PYTHONPATH=$PWD:$PYTHONPATH PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 perf/debug_block_sparse.py 2>&1 | tee "$OUT/debug_bs.log" | grep -v DEBUG
python3 perf/tune_kernels.py --seq-len ${S:-131072} 2>&1 | tee "$OUT/tune.log" | grep -v DEBUG
