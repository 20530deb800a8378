#!/usr/bin/env bash
# Device call on 2 GPUs (nvidia-h100-x2 / nvidia-h200-x2): minference_flex under accelerate.
# Each PART fits one 10-minute call; PART=all runs them in turn. JSON and logs go to $OUT.
#   PART=tests       GPU tests: dispatched models (one GPU with CPU offload, two GPUs, split refused),
#                    2-process eval and DDP steps on two GPUs
#   PART=prefill     pre-fill of the Llama-3-8B shape with its 32 layers on 2 GPUs, chunks of 32K, KV
#                    cache offloaded to the host, 1M tokens, structured indices (one run, compiles included)
#   PART=ratio       the same at 1M with 2 layers: dense, random and structured (the ratios)
#   PART=prefill256  256K at full depth on 1 and on 2 GPUs, cache on the GPUs (what the pipeline costs)
#   PART=eval     the accuracy table in 1 process, then data parallel in 2, tables compared
#   PART=ddp      DDP training steps of a patched Llama-3.2-1B shape at 32K tokens per process
set -o pipefail
export PYTHONPATH=$PWD:$PYTHONPATH PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
OUT=${OUT:-/tmp/out}
PART=${PART:-all}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpus.txt"
quiet() { grep -vE "DEBUG|^W[0-9]{4}|Loading weights"; }
E2E="python3 perf/bench_e2e.py --chunk 32768"

if [ "$PART" = tests ] || [ "$PART" = all ]; then
  timeout 540 python3 -m pytest -m gpu -q --tb=short tests/test_gpu_accelerate.py 2>&1 | tee "$OUT/gpu_accelerate_tests.log" | tail -15
fi
if [ "$PART" = prefill ] || [ "$PART" = all ]; then
  timeout 560 $E2E --gpus 2 --offload --layers 32 --lengths 1048576 --no-warmup \
    --skip sdpa dense flex_attention "minference_flex[shipped] random" \
    --out "$OUT/e2e_1m_llama3_8b_2gpus_offload.json" 2>&1 | quiet | tail -5
fi
if [ "$PART" = ratio ] || [ "$PART" = all ]; then
  timeout 300 $E2E --gpus 2 --offload --layers 2 --lengths 1048576 --skip sdpa flex_attention \
    --out "$OUT/e2e_1m_llama3_8b_2layers_2gpus_offload.json" 2>&1 | quiet | tail -6
fi
if [ "$PART" = prefill256 ] || [ "$PART" = all ]; then
  for gpus in 1 2; do
    timeout 280 $E2E --gpus $gpus --layers 32 --lengths 262144 --no-warmup \
      --skip sdpa flex_attention "minference_flex[shipped] random" \
      --out "$OUT/e2e_256k_llama3_8b_${gpus}gpus.json" 2>&1 | quiet | tail -4
  done
fi
if [ "$PART" = eval ] || [ "$PART" = all ]; then
  EVAL="-m minference_flex eval --lengths ${LENGTHS:-4096 8192} --samples ${SAMPLES:-20} --tasks passkey needle"
  start=$(date +%s.%N)
  timeout 250 python3 $EVAL --out "$OUT/eval_1proc.json" 2>&1 | quiet | tail -3
  mid=$(date +%s.%N)
  timeout 250 accelerate launch --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \
    $EVAL --out "$OUT/eval_2proc.json" 2>&1 | quiet | tail -3
  end=$(date +%s.%N)
  python3 - "$OUT" "$start" "$mid" "$end" <<'PY' | tee "$OUT/eval_compare.json"
import json, sys
out, start, mid, end = sys.argv[1], *map(float, sys.argv[2:])
one, two = (json.load(open(f"{out}/eval_{n}proc.json")) for n in (1, 2))
print(json.dumps({"rows_equal": one["rows"] == two["rows"], "recall_equal": one["recall"] == two["recall"],
                  "processes": [one["processes"], two["processes"]],
                  "wall_s_1proc": mid - start, "wall_s_2proc": end - mid}, indent=1))
PY
fi
if [ "$PART" = ddp ] || [ "$PART" = all ]; then
  timeout 300 accelerate launch --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \
    perf/accelerate_train_step.py --shape llama-1b --seq-len ${SEQ:-32768} --loss-tokens 1024 --steps 3 --checkpointing \
    --out "$OUT/ddp_step_llama1b_2gpus.json" 2>&1 | quiet | tail -6
fi
