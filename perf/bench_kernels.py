"""Kernel benchmark: each sparse pattern against dense SDPA (cuDNN, flash) in the same run.

Every sparse figure includes estimation and index/mask building. Prints a table and writes
JSON. Usage (on a GPU):
    python perf/bench_kernels.py --lengths 32768 131072 262144 --out perf/results/kernels.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import minference_flex as mf  # noqa: E402
from custom_ops.vertical_slash import (  # noqa: E402
    build_vertical_slash_index,
    computed_fraction,
    vertical_slash_attention,
)
from perf.common import (  # noqa: E402
    add_shape_arguments,
    machine,
    median_ms,
    print_table,
    sdpa_dense,
    vs_budgets,
    write_json,
)
from perf.planted import planted_vertical_slash  # noqa: E402

VS_BUDGETS = [(3500, 100), (30, 800), (1000, 6096)]


def interleaved_ratio(fn, baseline, rounds, rep_ms):
    """Median over `rounds` of fn's time over the baseline's, each pair timed back to back: the
    GPU's clock drifts by 1-2% between measurements minutes apart, which is more than decides
    a figure near 1.0. Returns (median ratio, per-round ratios)."""
    ratios = []
    for _ in range(rounds):
        t_base = median_ms(baseline, rep_ms=rep_ms)
        ratios.append(median_ms(fn, rep_ms=rep_ms) / t_base)
    return statistics.median(ratios), ratios


def bench_length(seq_len, heads, kv_heads, head_dim, modes, rep_ms, vs_budgets=VS_BUDGETS, flex=True,
                 interleave_rounds=5):
    from torch.nn.attention import SDPBackend

    rows = []
    q = torch.randn(1, heads, seq_len, head_dim, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, kv_heads, seq_len, head_dim, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    group = heads // kv_heads
    k_rep, v_rep = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    cudnn = sdpa_dense(q, k_rep, v_rep, SDPBackend.CUDNN_ATTENTION)
    t_cudnn = median_ms(cudnn, rep_ms=rep_ms)
    t_flash = median_ms(sdpa_dense(q, k_rep, v_rep, SDPBackend.FLASH_ATTENTION), rep_ms=rep_ms)
    t_ours_dense = median_ms(lambda: mf.dense_attention(q, k, v), rep_ms=rep_ms)
    dense_flops = 4 * heads * head_dim * seq_len * seq_len / 2

    def add(name, mode, ms, **extra):
        rows.append({"S": seq_len, "pattern": name, "mode": mode, "ms": ms, "x_cudnn": ms / t_cudnn, **extra})

    add("dense SDPA cuDNN", "-", t_cudnn, tflops=dense_flops / t_cudnn / 1e9)
    add("dense SDPA flash", "-", t_flash, tflops=dense_flops / t_flash / 1e9)
    fallback = {}
    if interleave_rounds:
        ratio, ratios = interleaved_ratio(lambda: mf.dense_attention(q, k, v), cudnn, interleave_rounds, rep_ms)
        fallback = {"x_cudnn_interleaved": ratio, "interleaved_ratios": ratios}
    add("dense_attention (GQA, fallback path)", "-", t_ours_dense, **fallback)

    for nv, ns in vs_budgets:
        for mode in modes:
            if mode == "random":
                v_idx, s_idx = mf.estimate_vertical_slash(q, k, nv, ns)

                def run(nv=nv, ns=ns):
                    return mf.dynamic_vertical_slash_attention(q, k, v, nv, ns)

                def run_sparse(nv=nv, ns=ns):
                    return mf.dynamic_vertical_slash_attention(q, k, v, nv, ns, dense_fallback=False)
            else:
                v_idx, s_idx = planted_vertical_slash(1, heads, seq_len, nv, ns, "cuda")

                def run(nv=nv, ns=ns, v_idx=v_idx, s_idx=s_idx):
                    mf.estimate_vertical_slash(q, k, nv, ns)
                    return mf.vertical_slash_sparse_attention(q, k, v, v_idx, s_idx)

                def run_sparse(nv=nv, ns=ns, v_idx=v_idx, s_idx=s_idx):
                    mf.estimate_vertical_slash(q, k, nv, ns)
                    return mf.vertical_slash_sparse_attention(q, k, v, v_idx, s_idx, dense_fallback=False)

            index = build_vertical_slash_index(v_idx, s_idx, seq_len, 64)
            frac = computed_fraction(index, 64).item()
            t_kernel = median_ms(lambda: vertical_slash_attention(q, k, v, index, 64, head_dim**-0.5), rep_ms=rep_ms)
            t_est = median_ms(lambda: mf.estimate_vertical_slash(q, k, nv, ns), rep_ms=rep_ms)
            t_index = median_ms(lambda: build_vertical_slash_index(v_idx, s_idx, seq_len, 64), rep_ms=rep_ms)
            tile_flops = frac * dense_flops * (seq_len / 64 + 1) / (seq_len / 64)
            t_all = median_ms(run, rep_ms=rep_ms)
            t_sparse = median_ms(run_sparse, rep_ms=rep_ms)
            near_dense = {}
            if interleave_rounds and t_all / t_cudnn >= 0.9:  # a figure whose side of 1.0 matters
                ratio, ratios = interleaved_ratio(run, cudnn, interleave_rounds, rep_ms)
                near_dense = {"x_cudnn_interleaved": ratio, "interleaved_ratios": ratios}
            add(f"vertical-slash ({nv}, {ns})", mode, t_all, sparse_only_ms=t_sparse, kernel_ms=t_kernel,
                estimate_ms=t_est, index_ms=t_index, computed_fraction=frac,
                kernel_tile_tflops=tile_flops / t_kernel / 1e9, **near_dense)

    del k_rep, v_rep, cudnn
    if not flex:
        return rows
    from minference_flex.ops.estimate import select_block_sparse_tiles
    from minference_flex.ops.flex import block_sparse_key_split_masks, key_split_parts

    passes = key_split_parts(k)

    def bs_masks():  # what block_sparse_attention builds before FlexAttention runs
        return block_sparse_key_split_masks(*select_block_sparse_tiles(q, k, 100, 64), seq_len, 64, passes)

    t_mask = median_ms(bs_masks, rep_ms=rep_ms)
    t_bs = median_ms(lambda: mf.block_sparse_attention(q, k, v, 100), rep_ms=rep_ms)
    nblocks = -(-seq_len // 64)
    bs_tiles = sum(min(m + 1, 101) for m in range(nblocks))
    bs_flops = bs_tiles * heads * 4 * 64 * 64 * head_dim
    add("block-sparse top 100 of 64", "random", t_bs, mask_ms=t_mask, passes=passes,
        kernel_tile_tflops=bs_flops / (t_bs - t_mask) / 1e9)

    from minference_flex.ops.flex import a_shape_block_mask

    t_amask = median_ms(lambda: a_shape_block_mask(1, heads, seq_len, 128, 4096, q.device), rep_ms=rep_ms)
    t_a = median_ms(lambda: mf.streaming_forward(q, k, v, 128, 4096), rep_ms=rep_ms)
    add("A-shape (128, 4096)", "random", t_a, mask_ms=t_amask)
    return rows


KERNEL_COLUMNS = ["S", "pattern", "mode", "ms", "x_cudnn", "x_cudnn_interleaved", "sparse_only_ms", "kernel_ms", "estimate_ms",
                  "index_ms", "mask_ms", "computed_fraction", "kernel_tile_tflops", "tflops"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    add_shape_arguments(parser, [32768, 131072, 262144], VS_BUDGETS)
    parser.add_argument("--interleave-rounds", type=int, default=5,
                        help="rounds of back-to-back timing against cuDNN for figures >= 0.9 of it (0: off)")
    parser.add_argument("--out", default="perf/results/kernels.json")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench_kernels needs a CUDA GPU")
    info = machine()
    print(info)
    rows = []
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    for seq_len in args.lengths:
        rows += bench_length(seq_len, args.heads, args.kv_heads, args.head_dim, args.modes, args.rep_ms,
                             vs_budgets(args), not args.no_flex, args.interleave_rounds)
        torch.cuda.empty_cache()
        print_table([r for r in rows if r["S"] == seq_len], KERNEL_COLUMNS)
        write_json(args.out, {"machine": info, "args": vars(args), "rows": rows})  # after each length
    print_table(rows, KERNEL_COLUMNS)


if __name__ == "__main__":
    main()
