"""Launch-configuration sweeps and cost breakdowns for the kernels (GPU).

    python perf/tune_kernels.py --seq-len 131072
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import minference_flex as mf  # noqa: E402
from custom_ops.vertical_slash import build_vertical_slash_index, computed_fraction  # noqa: E402
from custom_ops.vertical_slash.kernel import launch_vertical_slash  # noqa: E402
from minference_flex.estimate import (  # noqa: E402
    _diagonal_sums,
    _grouped_last_probs,
    select_block_sparse_tiles,
)
from perf.common import median_ms  # noqa: E402
from perf.planted import planted_vertical_slash  # noqa: E402


def estimate_breakdown(q, k):
    probs = _grouped_last_probs(q, k, 64, 0.088)
    vertical = probs.sum(-2)
    slash = _diagonal_sums(probs)
    print(f"estimate total (1000,6096): {median_ms(lambda: mf.estimate_vertical_slash(q, k, 1000, 6096)):.3f} ms")
    print(f"  scores+softmax: {median_ms(lambda: _grouped_last_probs(q, k, 64, 0.088)):.3f} ms")
    print(f"  vertical sum:   {median_ms(lambda: probs.sum(-2)):.3f} ms")
    print(f"  diagonal sums:  {median_ms(lambda: _diagonal_sums(probs)):.3f} ms")
    for n in (1000, 3500, 6096):
        print(f"  topk {n}:      {median_ms(lambda: vertical.topk(n, dim=-1, sorted=False)):.3f} ms")
    print(f"  index (1000,6096): {median_ms(lambda: build_vertical_slash_index(vertical.topk(1000, -1).indices, slash.topk(6096, -1).indices, q.shape[2], 64)):.3f} ms (incl. 2 topk)")


def sweep_vertical_slash(q, k, v):
    s = q.shape[2]
    for label, (nv, ns), planted in [("random", (3500, 100), False), ("random", (30, 800), False),
                                     ("planted", (1000, 6096), True)]:
        if planted:
            v_idx, s_idx = planted_vertical_slash(1, q.shape[1], s, nv, ns, "cuda")
        else:
            v_idx, s_idx = mf.estimate_vertical_slash(q, k, nv, ns)
        index = build_vertical_slash_index(v_idx, s_idx, s, 64)
        frac = computed_fraction(index, 64).item()
        for col_block in (64, 128):
            for stages in (2, 3, 4):
                try:
                    ms = median_ms(lambda: launch_vertical_slash(q, k, v, index, 64, 0.088, 4, stages, col_block))
                except Exception as exc:
                    print(f"vs {label} ({nv},{ns}) col_block={col_block} stages={stages}: {type(exc).__name__}")
                    continue
                print(f"vs {label} ({nv},{ns}) frac={frac:.3f} col_block={col_block} stages={stages}: {ms:.2f} ms")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seq-len", type=int, default=131072)
    args = parser.parse_args()
    s = args.seq_len
    q = torch.randn(1, 32, s, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 8, s, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    estimate_breakdown(q, k)
    print(f"block-sparse select: {median_ms(lambda: select_block_sparse_tiles(q, k, 100, 64)):.3f} ms")
    sweep_vertical_slash(q, k, v)


if __name__ == "__main__":
    main()
