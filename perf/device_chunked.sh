#!/usr/bin/env bash
# Device call: chunked pre-fill. GPU tests of the chunked path, then bench_e2e in chunks of 32K
# on the Llama-3-8B shape (4 layers at 128K/256K, 2 at 512K: every mode runs the same layers,
# so the ratios hold). PART=memory runs the full-depth 512K Llama-3-8B pre-fill with the cache
# offloaded to the host by mf.HostOffloadedCache (H100: its 64 GiB cache does not fit beside the
# weights); PART=memory_h200 the full-depth 1M Qwen2.5-7B-1M pre-fill with the cache on the GPU
# (an H200: 56 GiB cache). Both memory runs pre-fill through model.generate(prefill_chunk_size=32768).
# MEM_TIMEOUT (s) bounds a memory run.
set -o pipefail
export PYTHONPATH=$PWD:$PYTHONPATH PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
E2E="python3 perf/bench_e2e.py --chunk 32768 --skip flex_attention"
if [ "${PART:-speed}" = speed ]; then
  timeout 250 python3 -m pytest -m gpu -q --tb=short -x ${TESTS:-tests/test_gpu_chunked.py} 2>&1 | tee "$OUT/gpu_tests.log" | grep -E "passed|failed|FAILED|Error|assert" | head -30
  timeout 150 $E2E --layers 4 --lengths 131072 262144 --out "$OUT/e2e_chunked_llama_128k_256k.json" 2>&1 | grep -vE "DEBUG|W12" | tail -12
  timeout 200 $E2E --layers 2 --lengths 524288 --out "$OUT/e2e_chunked_llama_512k.json" 2>&1 | grep -vE "DEBUG|W12" | tail -7
elif [ "$PART" = memory ]; then
  timeout ${MEM_TIMEOUT:-560} $E2E --layers 32 --lengths 524288 --offload --no-warmup --generate --skip sdpa flex_attention dense "minference_flex[shipped] random" \
    --out "$OUT/e2e_chunked_llama_512k_full_offload.json" 2>&1 | tee "$OUT/memory.log" | grep -vE "DEBUG|W12" | tail -24
else
  timeout ${MEM_TIMEOUT:-560} $E2E --shape qwen2.5-7b-1m --layers 28 --lengths 1048576 --no-warmup --generate \
    --skip sdpa flex_attention dense "minference_flex[shipped] random" --out "$OUT/e2e_chunked_qwen_1m_full.json" 2>&1 | tee "$OUT/memory.log" | grep -vE "DEBUG|W12" | tail -40
fi
