#!/usr/bin/env bash
# Device call: pattern search on the Llama-3-8B shape at 32K (time, memory), then the end-to-end
# pre-fill benchmark with the shipped and the searched config at 32K and 128K (about 5 min on an
# H100). 256K is its own call (about 6 min: every mode but sdpa runs twice there):
#   python3 perf/bench_e2e.py --lengths 262144 --skip "minference_flex[searched]" --out $OUT/e2e_256k.json
set -o pipefail
export PYTHONPATH=$PWD:$PYTHONPATH PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 perf/bench_search.py --length 32768 --out "$OUT/searched_llama3_8b_32k.json" --summary "$OUT/search_summary.json" 2>&1 | tail -45 | tee "$OUT/search.log"
python3 perf/bench_e2e.py --lengths ${LENGTHS:-32768 131072} --config searched="$OUT/searched_llama3_8b_32k.json" \
    --out "$OUT/e2e.json" 2>&1 | tee "$OUT/e2e.log" | grep -vE "DEBUG|W1123"
