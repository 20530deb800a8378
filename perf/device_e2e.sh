#!/usr/bin/env bash
# Device call: pattern search on the Llama-3-8B shape at 32K (time, memory), then the end-to-end
# pre-fill benchmark with the shipped and the searched config (about 9 min on an H100).
set -o pipefail
export PYTHONPATH=$PWD:$PYTHONPATH PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 perf/bench_search.py --length 32768 --out "$OUT/searched_llama3_8b_32k.json" --summary "$OUT/search_summary.json" 2>&1 | tail -45 | tee "$OUT/search.log"
python3 perf/bench_e2e.py --lengths ${LENGTHS:-32768 131072 262144} --config searched="$OUT/searched_llama3_8b_32k.json" \
    --out "$OUT/e2e.json" 2>&1 | tee "$OUT/e2e.log" | grep -vE "DEBUG|W1123"
