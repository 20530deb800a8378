#!/usr/bin/env bash
# Device calls that train the 64K retrieval model (`--preset long`: 15 min of training on an
# H100, the shipped model's two calls; its MODEL_CARD.md) across calls of at most 10
# minutes. Each call resumes ckpt/ (a git-ignored folder in the repo root, carried in) when it
# holds a checkpoint, else starts fresh; trains for TRAIN_MINUTES (default 8.5) and writes the
# checkpoint to $OUT/ckpt: config.json, generation_config.json, model.safetensors,
# optimizer-*.pt (shards of at most 16 MiB), train_state.json, train_log.json; no optimizer
# once the schedule is done. The loop, from the repo root:
#   1. run `bash perf/device_train_retrieval.sh`, with carry ["ckpt"] once ckpt/ exists;
#   2. replace ckpt/ with the returned $OUT/ckpt files (rm -rf ckpt && cp -r <files_at>/ckpt ckpt);
#   3. repeat until the last line says "schedule done";
#   4. copy ckpt/{config.json,generation_config.json,model.safetensors,train_log.json} into
#      minference_flex/models/retrieval_llama/, search its pattern_config.json anew (as
#      perf/device_models.sh does), then the accuracy table (>= 50 samples a cell):
#      python3 perf/bench_accuracy.py --lengths 4096 16384 32768 65536 --samples 50 \
#          --tasks passkey needle multikey --methods dense --no-recall
# Printed: steps every 500 (loss, ms a step), the evals (a few held-out samples per task at the
# stage's length), the files written and where the schedule stands.
set -o pipefail
export PYTHONPATH=$PWD:$PYTHONPATH PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT/ckpt"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
RESUME=()
if [ -f ckpt/train_state.json ]; then RESUME=(--resume ckpt); fi
python3 -m minference_flex.train --preset long --out "$OUT/ckpt" "${RESUME[@]}" \
    --max-minutes "${TRAIN_MINUTES:-8.5}" --eval-every "${EVAL_EVERY:-500}" --eval-samples "${EVAL_SAMPLES:-5}" \
    2>&1 | tee /tmp/train.log \
    | grep --line-buffered -E '"step": [0-9]*[05]00,|passkey|budget spent|nothing to train|wrote ' \
    || { echo "training failed:"; tail -30 /tmp/train.log; }
STATE=$OUT/ckpt/train_state.json
[ -f "$STATE" ] || STATE=ckpt/train_state.json
python3 -c "
import json; s = json.load(open('$STATE'))
print('schedule done' if s['done'] else 'schedule at', s['progress'])"
