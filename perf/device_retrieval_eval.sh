#!/usr/bin/env bash
# Device call after the 64K retrieval model is trained (perf/device_train_retrieval.sh) and its
# files are in minference_flex/models/retrieval_llama/: search its pattern config on a
# calibration prompt that is no eval sample (multikey, training seed 7), then the accuracy
# table with every method and the needle-in-a-haystack sweep, then the model's GPU tests.
# Back in $OUT: pattern_config.json (copy it into the model folder), accuracy.json (into
# perf/results/, then `python perf/plot.py --only niah`), search.log, accuracy.log, gpu_tests.log.
# CALIB (tokens, default 32768) sets the calibration length (prompts of training seed 7, never
# an evaluation sample); SEARCH=0 keeps the model's
# committed config instead; LENGTHS, SAMPLES, METHODS, NIAH ("" for none) and NIAH_SAMPLES the
# table. The table's JSON is rewritten after each length, so a timeout keeps the lengths done.
set -o pipefail
export PYTHONPATH=$PWD:$PYTHONPATH PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
M=minference_flex/models/retrieval_llama
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
CALIB=${CALIB:-32768}
python3 -c "
import json; from minference_flex.tasks import make_sample
for task in ('multikey', 'passkey', 'needle'):
    json.dump(make_sample(task, $CALIB, 7).prompt, open(f'/tmp/calib_{task}.json', 'w'))"
# REFINE=NATS: refine the searched config against the model's predictions on the three
# calibration prompts (search --refine-kl)
REFINE_ARGS=()
[ -n "$REFINE" ] && REFINE_ARGS=(--refine-kl "$REFINE" --refine-prompts /tmp/calib_passkey.json /tmp/calib_needle.json)
# candidates: MInference's search space scaled by CALIB / 128K (the A-shape too), plus its default
# (1000, 6096), (30, 800) unscaled, block-sparse, and columns with the local band alone ((300, 100),
# (1000, 100): the shipped model's last rows attend a few needle columns or nearly every key)
S=$((CALIB / 1024))
if [ "${SEARCH:-1}" != 0 ]; then
timeout ${SEARCH_TIMEOUT:-120} python3 -m minference_flex search --model "$M" --out "$OUT/pattern_config.json" --calibration /tmp/calib_multikey.json "${REFINE_ARGS[@]}" \
    --budget vs:1000,6096 --budget vs:$((1000 * S / 128)),$((6096 * S / 128)) --budget vs:$((3500 * S / 128)),100 \
    --budget vs:30,$((800 * S / 128)) --budget vs:100,$((800 * S / 128)) --budget vs:30,800 \
    --budget vs:300,100 --budget vs:1000,100 --budget a:128,$((4096 * S / 128)) --budget bs 2>&1 | tee "$OUT/search.log" | tail -12
cp "$OUT/pattern_config.json" "$M/pattern_config.json"
fi
NIAH_ARGS=()
[ -n "${NIAH-0 10 20 30 40 50 60 70 80 90 100}" ] && NIAH_ARGS=(--niah-depths ${NIAH-0 10 20 30 40 50 60 70 80 90 100} --niah-samples ${NIAH_SAMPLES:-10})
timeout ${ACC_TIMEOUT:-420} python3 perf/bench_accuracy.py --lengths ${LENGTHS:-4096 8192 16384 32768 65536} \
    --samples ${SAMPLES:-50} --tasks ${TASKS:-passkey needle multikey} ${METHODS:+--methods $METHODS} "${NIAH_ARGS[@]}" \
    --out "$OUT/accuracy.json" 2>&1 | tee "$OUT/accuracy.log" | grep -vE "DEBUG|W12"
timeout 120 python3 -m pytest -m gpu -q tests/test_gpu_models.py 2>&1 | tee "$OUT/gpu_tests.log" | tail -5
