#!/usr/bin/env bash
# One device call: kernel variant sweeps at 128K (all) and 256K (estimator, block-sparse,
# vertical-slash at 3 stages).
#   bash perf/device_tune.sh        (writes $OUT/tune_*.json and logs)
set -o pipefail
export PYTHONPATH=$PWD:$PYTHONPATH PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv
python3 perf/tune_kernels.py --seq-len 131072 --out "$OUT/tune_131072.json" 2>&1 | tee "$OUT/tune_131072.log" | grep -vE "DEBUG|W1123"
python3 perf/tune_kernels.py --seq-len 262144 --only estimate bs vs --flex-options current --stages 3 \
  --out "$OUT/tune_262144.json" 2>&1 | tee "$OUT/tune_262144.log" | grep -vE "DEBUG|W1123"
