"""Pattern search on the Llama-3-8B shape with random weights: time and peak GPU memory.

Builds LlamaForCausalLM (hidden 4096, 32 layers, 32 q / 8 kv heads, intermediate 14336,
vocab 128256, rope_theta 500000) directly on the GPU in bf16, runs `minference_flex.pattern_search.search`
on the built-in synthetic prompt and writes the config and a JSON summary. Usage (on a GPU):
    python perf/bench_search.py --length 32768
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import minference_flex as mf  # noqa: E402
from perf.common import llama3_8b, machine, write_json  # noqa: E402

GIB = 2**30


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=32768, help="calibration tokens (default 32768)")
    parser.add_argument("--layers", type=int, default=32, help="decoder layers (default 32, the real model)")
    parser.add_argument("--num-tiles", type=int, default=32, help="query tiles sampled per head")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="perf/results/searched_llama3_8b_32k.json", help="the pattern config")
    parser.add_argument("--summary", default="perf/results/search_llama3_8b_32k.json", help="JSON summary")
    args = parser.parse_args(argv)
    for name in ("length", "layers", "num_tiles"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench_search needs a CUDA GPU")
    info = machine()
    print(info)
    tic = time.perf_counter()
    model = llama3_8b(args.layers, args.seed)
    torch.cuda.synchronize()
    build_s = time.perf_counter() - tic
    model_bytes = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    result = mf.search(model, length=args.length, num_tiles=args.num_tiles, seed=args.seed)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    counts = Counter(f"{p.kind} {p.a},{p.b}" for layer in result.config for p in layer)
    every = [r for layer in result.recall for r in layer]
    summary = {
        "machine": info,
        "args": vars(args),
        "build_s": build_s,
        "search_s": result.seconds,
        "scoring_s": sum(result.layer_seconds),
        "layer_scoring_s": result.layer_seconds,
        "model_gib": model_bytes / GIB,
        "peak_gib": peak / GIB,
        "peak_over_model_gib": (peak - model_bytes) / GIB,
        "mean_recall": sum(every) / len(every),
        "patterns": dict(counts.most_common()),
        "mean_candidate_cost": {f"{c.kind} {c.a},{c.b}": cost for c, cost in zip(result.candidates, result.mean_candidate_cost())},
    }
    print(f"search at {result.seq_len} tokens: {result.seconds:.1f} s ({summary['scoring_s']:.1f} s scoring), "
          f"peak {peak / GIB:.2f} GiB ({model_bytes / GIB:.2f} GiB weights); model built in {build_s:.1f} s")
    print("patterns:", dict(counts.most_common()))
    for path in (args.out, args.summary):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    result.save(args.out)
    print(f"wrote {args.out}")
    write_json(args.summary, summary)


if __name__ == "__main__":
    main()
