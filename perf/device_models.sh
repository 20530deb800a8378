#!/usr/bin/env bash
# Device call 1 of the model work (about 9 min on an H100): train the retrieval model, search its
# pattern config at 16K, look at its heads. Everything lands in $OUT (the model folder,
# attention_shapes.json, log.txt); copy $OUT/retrieval_llama/* into
# minference_flex/models/retrieval_llama/, commit, then run perf/device_accuracy.sh (call 2).
set -o pipefail
export PYTHONPATH=$PWD:$PYTHONPATH PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
M=$OUT/retrieval_llama
mkdir -p "$M"
LOG=$OUT/log.txt
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$LOG"
python3 -m minference_flex.train --out "$M" --preset gpu --max-minutes ${TRAIN_MINUTES:-7} --time-shares --eval-every 1000 \
    2>&1 | tee -a "$LOG" | grep -E "final|eval|used up|step\": [0-9]*000,"
# budgets for 16K prompts: MInference's search space scaled by 16K/128K (the A-shape too), plus its
# default (1000, 6096), dense-equivalent at 16K: without it diffuse heads got lossy patterns
python3 -c "import json; from minference_flex.tasks import make_sample; json.dump(make_sample('multikey', 16384, 7).prompt, open('/tmp/calib.json', 'w'))"
python3 -m minference_flex search --model "$M" --out "$M/pattern_config.json" --calibration /tmp/calib.json \
   --budget vs:1000,6096 --budget vs:125,760 --budget vs:440,100 --budget vs:30,100 --budget vs:30,200 \
    --budget vs:60,90 --budget a:16,512 --budget a:16,1024 --budget bs 2>&1 | tail -8 | tee -a "$LOG"
python3 perf/inspect_attention.py --model "$M" --length 16384 --out "$OUT/attention_shapes.json" 2>&1 | tail -20 | tee -a "$LOG"
