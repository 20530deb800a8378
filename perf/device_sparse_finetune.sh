#!/usr/bin/env bash
# Device call: fine-tune the shipped retrieval model twice from the same weights with the same
# schedule, dense and through sparse attention (`python -m minference_flex.train --init M
# [--sparse-attention CONFIG]`), then compare the runs (perf/compare_finetune.py): loss over
# equal steps, time per step, final held-out accuracy.
# PATTERN: "auto" (default: the model's searched pattern_config.json) or one pattern for every
# head, e.g. "vs:30,800", "bs" or "a:128,4096" (written to a config file here).
# STAGES (default one stage of 200 steps at 64K: no replay, so every step times that length),
# LR (default 3e-4), EVAL_SAMPLES (default 20 per task for the final evaluation).
# Back in $OUT: dense_train_log.json, sparse_train_log.json, finetune.json (copy it into
# perf/results/ as finetune_<date>_<gpu>.json, then `python perf/plot.py --only finetune`).
# KEEP_WEIGHTS=sparse (or dense; one run: a call brings back at most 8 files) also brings back its weights as
# <run>_model.safetensors, <run>_config.json and <run>_generation_config.json: put them in a
# folder under their own names (model.safetensors, ...) to load or ship the fine-tuned model.
set -o pipefail
export PYTHONPATH=$PWD:$PYTHONPATH PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
M=minference_flex/models/retrieval_llama
PATTERN=${PATTERN:-auto}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
CONFIG=auto
if [ "$PATTERN" != auto ]; then
  CONFIG=/tmp/finetune_pattern_config.json
  python3 -c "
from minference_flex.config import save_pattern_config
from minference_flex.retrieval_model import load_retrieval_model
from minference_flex.search import parse_candidate
c = load_retrieval_model('$M').config
save_pattern_config([[parse_candidate('$PATTERN')] * c.num_attention_heads] * c.num_hidden_layers, '$CONFIG')" || exit 1
fi
COMMON=(--init "$M" --tasks passkey needle multikey --stages ${STAGES:-65536:200:1} --lr "${LR:-3e-4}"
        --eval-every 1000000 --eval-samples "${EVAL_SAMPLES:-20}" --max-minutes "${RUN_MINUTES:-4}")
for run in dense sparse; do
  extra=()
  [ $run = sparse ] && extra=(--sparse-attention "$CONFIG")
  python3 -m minference_flex.train "${COMMON[@]}" "${extra[@]}" --out /tmp/finetune_$run 2>&1 \
      | tee /tmp/finetune_$run.log | grep --line-buffered -E '"step": [0-9]*00,|final_eval|budget spent' \
      || { echo "$run fine-tune failed:"; tail -30 /tmp/finetune_$run.log; exit 1; }
  cp /tmp/finetune_$run/train_log.json "$OUT/${run}_train_log.json"
  if [[ " ${KEEP_WEIGHTS:-} " == *" $run "* ]]; then
    for f in model.safetensors config.json generation_config.json; do cp /tmp/finetune_$run/$f "$OUT/${run}_$f"; done
  fi
done
python3 perf/compare_finetune.py /tmp/finetune_dense /tmp/finetune_sparse --out "$OUT/finetune.json"
