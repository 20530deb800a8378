#!/usr/bin/env bash
# Device call for training through the sparse patterns: the GPU backward tests, then
# perf/bench_train.py at 128K with --launch-sweep (every pattern's forward + backward against
# cuDNN, and the backward kernels alone at each num_warps x num_stages), then the 1B Llama
# training step at 64K. Each JSON is written as its rows are measured. The three parts take
# more than one call's 10 minutes:
#   bash perf/device_train_bench.sh                  (tests and bench, about 9.5 minutes)
#   PART=step bash perf/device_train_bench.sh        (the model step, about 3 minutes)
# Back in $OUT: gpu_backward_tests.log, train_128k.json/.log, train_step_64k.json/.log (copy the
# JSON into perf/results/ as train_<date>_<commit>_128k_<gpu>.json and train_step_...).
set -o pipefail
export PYTHONPATH=$PWD:$PYTHONPATH PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
PART=${PART:-tests bench}
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader
if [[ " $PART " == *" tests "* ]]; then
  timeout ${TEST_TIMEOUT:-300} python3 -m pytest -m gpu -q --tb=short tests/test_gpu_backward.py 2>&1 \
    | tee "$OUT/gpu_backward_tests.log" | grep -E "passed|failed|FAILED|Error|assert" | head -30
fi
if [[ " $PART " == *" bench "* ]]; then
  timeout ${BENCH_TIMEOUT:-270} python3 perf/bench_train.py --lengths 131072 --rep-ms ${REP_MS:-300} --launch-sweep \
    --out "$OUT/train_128k.json" 2>&1 | tee "$OUT/train_128k.log" | grep -vE "DEBUG|W12" | tail -40
fi
if [[ " $PART " == *" step "* ]]; then
  timeout ${STEP_TIMEOUT:-150} python3 perf/bench_train.py --model-step --lengths 65536 \
    --out "$OUT/train_step_64k.json" 2>&1 | tee "$OUT/train_step_64k.log" | grep -vE "DEBUG|W12" | tail -12
fi
