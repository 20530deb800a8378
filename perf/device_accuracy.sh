#!/usr/bin/env bash
# Device call: GPU tests, then the accuracy table on the trained retrieval model (after
# device_models.sh's results are committed under minference_flex/models/retrieval_llama).
# NIAH="0 10 20 30 40 50 60 70 80 90 100" adds the needle sweep (NIAH_SAMPLES per cell, default 10).
set -o pipefail
export PYTHONPATH=$PWD:$PYTHONPATH PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pytest -m gpu -q tests 2>&1 | tee "$OUT/gpu_tests.log" | grep -E "passed|failed|FAILED|Error" | head -30
python3 perf/bench_accuracy.py --lengths ${LENGTHS:-4096 8192 16384 32768} --samples ${SAMPLES:-50} --tasks ${TASKS:-passkey needle} \
    ${NIAH:+--niah-depths $NIAH --niah-samples ${NIAH_SAMPLES:-10}} \
    --out "$OUT/accuracy.json" 2>&1 | tee "$OUT/accuracy.log" | grep -vE "DEBUG|W1123"
python3 -m minference_flex demo 2>&1 | tee "$OUT/demo.log" | tail -20
