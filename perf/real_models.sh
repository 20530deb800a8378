#!/usr/bin/env bash
# Search, refine and evaluate a real LLM on the real-text tasks (minference_flex.text_tasks).
#
#   bash perf/real_models.sh MODEL SEARCH_LENGTH OUT_DIR
#   e.g. bash perf/real_models.sh smollm2 8192 perf/results
#
# MODEL: a short name (smollm2, gemma3-270m), a .gguf file or a folder. Writes to OUT_DIR:
#   NAME_searched.json   the recall search at SEARCH_LENGTH on the book's calibration region
#   NAME_refined_KL.json the same, refined against the model's predictions for each KL in REFINE_KLS
#   accuracy_DATE_NAME_real.json  the accuracy table at LENGTHS (dense, searched, refined, MInference's
#                        every-head patterns) and perplexity / KL on held-out book text at the longest
# Environment: LENGTHS (default: SEARCH_LENGTH/4, /2, SEARCH_LENGTH - 16), SAMPLES (20), TASKS (all),
# REFINE_KLS ("0.01 0.03"), REFINE_POSITIONS (256), LM_POSITIONS (1024), LM_TEXTS (4), NAME,
# METHODS (eval's built-in methods; default "dense searched default bs-100 a-shape"), BUDGETS (the
# search's candidates, e.g. "vs:1000,6096 a:64,512 bs"; default MInference's set), EVAL_FLAGS (more eval
# options, e.g. "--exact-masks --device cpu" on a machine without a GPU).
set -euo pipefail
model=$1; length=$2; out=$3
name=${NAME:-$(basename "${model%.gguf}")}
# the longest prompt leaves room for the answer inside the trained positions
lengths=${LENGTHS:-"$((length / 4)) $((length / 2)) $((length - 16))"}
tasks=${TASKS:-"passkey needle multikey kv"}
mkdir -p "$out"
budgets=()
for b in ${BUDGETS:-}; do budgets+=(--budget "$b"); done
configs=()
first=1
for kl in ${REFINE_KLS:-0.01 0.03}; do
  extra=()
  if [ $first = 1 ]; then extra=(--searched-out "$out/${name}_searched.json"); first=0; fi
  python -m minference_flex search --model "$model" --length "$length" --quiet "${budgets[@]}" \
    --refine-kl "$kl" --refine-positions "${REFINE_POSITIONS:-256}" "${extra[@]}" --out "$out/${name}_refined_${kl}.json"
  configs+=(--config "refined KL ${kl}=$out/${name}_refined_${kl}.json")
done
python -m minference_flex eval --model "$model" --lengths $lengths --tasks $tasks --samples "${SAMPLES:-20}" \
  --methods ${METHODS:-dense searched default bs-100 a-shape} --searched "$out/${name}_searched.json" "${configs[@]}" \
  --lm-positions "${LM_POSITIONS:-1024}" --lm-texts "${LM_TEXTS:-4}" ${EVAL_FLAGS:-} \
  --out "$out/accuracy_$(date +%F)_${name}_real.json"
