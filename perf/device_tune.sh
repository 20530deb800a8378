#!/usr/bin/env bash
set -o pipefail
export PYTHONPATH=$PWD:$PYTHONPATH PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
for s in ${LENGTHS:-131072}; do
  python3 perf/tune_kernels.py --seq-len $s 2>&1 | tee "$OUT/tune_$s.log" | grep -vE "DEBUG|W1123" | tail -40
done
