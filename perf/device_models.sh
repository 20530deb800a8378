#!/usr/bin/env bash
# One device call for the model work (about 9 min on an H100): train the retrieval model, put it
# where the package looks for it (on the device's copy), search its pattern config at 16K, look
# at its heads, run the accuracy table, then the GPU tests. Everything lands in $OUT (8 files:
# the model folder, accuracy.json, attention_shapes.json, log.txt); copy
# $OUT/retrieval_llama/* into minference_flex/models/retrieval_llama/ afterwards.
set -o pipefail
export PYTHONPATH=$PWD:$PYTHONPATH PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
M=$OUT/retrieval_llama
mkdir -p "$M"
LOG=$OUT/log.txt
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$LOG"
python3 -m minference_flex.train --out "$M" --preset gpu --max-minutes ${TRAIN_MINUTES:-4.5} --eval-every 1000 \
    2>&1 | tee -a "$LOG" | grep -E "final|eval|used up|step\": [0-9]*000,"
cp "$M"/*.json "$M"/*.safetensors minference_flex/models/retrieval_llama/
# budgets for 16K prompts: MInference's search space scaled by 16K/128K (the A-shape too), plus its
# default (1000, 6096), dense-equivalent at 16K: without it diffuse heads got lossy patterns
python3 -c "import json; from minference_flex.tasks import make_sample; json.dump(make_sample('multikey', 16384, 7).prompt, open('/tmp/calib.json', 'w'))"
python3 -m minference_flex search --model "$M" --out "$M/pattern_config.json" --calibration /tmp/calib.json \
   --budget vs:1000,6096 --budget vs:125,760 --budget vs:440,100 --budget vs:30,100 --budget vs:30,200 \
    --budget vs:60,90 --budget a:16,512 --budget a:16,1024 --budget bs 2>&1 | tail -8 | tee -a "$LOG"
cp "$M/pattern_config.json" minference_flex/models/retrieval_llama/
python3 perf/inspect_attention.py --model "$M" --length 16384 --out "$OUT/attention_shapes.json" 2>&1 | tail -20 | tee -a "$LOG"
python3 perf/bench_accuracy.py --lengths ${LENGTHS:-4096 8192 16384 32768} --samples ${SAMPLES:-30} \
    --out "$OUT/accuracy.json" 2>&1 | grep -vE "DEBUG|W1123|^wrote" | tee -a "$LOG" | tail -70
timeout ${TEST_SECONDS:-150} python3 -m pytest -m gpu -q -x tests 2>&1 | tee -a "$LOG" | grep -E "passed|failed|FAILED|Error" | head -20
