"""Launch-configuration sweeps and cost breakdowns for the kernels (GPU).

    python perf/tune_kernels.py --seq-len 131072 [--only estimate vs bs fallback fallback_profile marginal bs_locality bs_split dense_chunks] [--out tune.json]

Every variant's output is compared with the first (baseline) variant of its group, so a
faster but wrong configuration shows up as a large max_abs_diff.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import minference_flex as mf  # noqa: E402
from custom_ops.top_tiles import top_tiles  # noqa: E402
from custom_ops.vertical_slash import build_vertical_slash_index, computed_fraction  # noqa: E402
from custom_ops.vertical_slash.kernel import launch_vertical_slash  # noqa: E402
from custom_ops.vertical_slash_scores import vertical_slash_scores  # noqa: E402
from minference_flex.ops.estimate import (  # noqa: E402
    _diagonal_sums,
    grouped_last_probs,
    _grouped_last_scores,
    _top_tiles_torch,
    pool_tiles,
    pooled_tile_scores,
)
from minference_flex.ops.flex import (  # noqa: E402
    FLEX_ALIGN,
    _compiled_flex,
    _kernel_options,
    block_sparse_block_mask,
    flex_padded_length,
)
from perf.common import machine, median_ms, write_json  # noqa: E402
from perf.planted import planted_vertical_slash  # noqa: E402

ROWS: list[dict] = []


def report(group: str, variant: str, ms: float, **extra) -> None:
    ROWS.append({"group": group, "variant": variant, "ms": ms, **extra})
    tail = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in extra.items())
    print(f"{group:28s} {variant:44s} {ms:9.3f} ms {tail}", flush=True)


def diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def estimate_breakdown(q, k, rep):
    scale = q.shape[-1] ** -0.5

    def old():
        probs = grouped_last_probs(q, k, 64, scale)
        return probs.sum(-2), _diagonal_sums(probs)

    def fused():
        return vertical_slash_scores(_grouped_last_scores(q, k, 64, scale))

    (v0, s0), (v1, s1) = old(), fused()
    report("estimate sums", "torch softmax + sums", median_ms(old, rep_ms=rep))
    report("estimate sums", "fused Triton", median_ms(fused, rep_ms=rep),
           max_abs_diff=max(diff(v0, v1), diff(s0, s1)), max_score=v0.max().item())
    scores = _grouped_last_scores(q, k, 64, scale)
    report("estimate sums", "  scores matmul alone", median_ms(lambda: _grouped_last_scores(q, k, 64, scale), rep_ms=rep))
    from custom_ops.vertical_slash_scores.kernel import _row_stats_launch, _sums_launch

    part = _row_stats_launch(scores, 1024)
    report("estimate sums", "  row stats kernel", median_ms(lambda: _row_stats_launch(scores, 1024), rep_ms=rep))
    for columns, diagonals in ((True, True), (True, False), (False, True)):
        report("estimate sums", f"  sums kernel, default steps, columns={int(columns)} diagonals={int(diagonals)}",
               median_ms(lambda: _sums_launch(scores, *part, columns=columns, diagonals=diagonals), rep_ms=rep))
    for budgets in ((3500, 100), (30, 800), (1000, 6096), (30, 100)):
        report("estimate sums", f"  estimate_vertical_slash {budgets}",
               median_ms(lambda: mf.estimate_vertical_slash(q, k, *budgets), rep_ms=rep))
    v0, s0 = _sums_launch(scores, *part, 64, 256, 8)
    for bl, bn, w in ((8, 512, 4), (8, 1024, 4), (4, 1024, 4), (2, 1024, 4), (4, 2048, 4), (2, 2048, 4),
                      (4, 4096, 4), (2, 4096, 4), (4, 2048, 8), (2, 4096, 8), (4, 4096, 8)):
        v1, s1 = _sums_launch(scores, *part, bl, bn, w)
        report("estimate sums", f"  sums kernel rows={bl} keys={bn} warps={w}",
               median_ms(lambda: _sums_launch(scores, *part, bl, bn, w), rep_ms=rep),
               max_abs_diff=max(diff(v0, v1), diff(s0, s1)))
    for kk in (30, 800, 3500, 6096):
        report("estimate", f"  torch.topk k={kk} of the slash scores",
               median_ms(lambda: s1.topk(kk, dim=-1, sorted=False), rep_ms=rep))
    report("estimate", "estimate_vertical_slash (30,800)",
           median_ms(lambda: mf.estimate_vertical_slash(q, k, 30, 800), rep_ms=rep))
    report("estimate", "estimate_vertical_slash (3500,100)",
           median_ms(lambda: mf.estimate_vertical_slash(q, k, 3500, 100), rep_ms=rep))
    report("estimate", "estimate_vertical_slash (1000,6096)",
           median_ms(lambda: mf.estimate_vertical_slash(q, k, 1000, 6096), rep_ms=rep))


def sweep_vertical_slash(q, k, v, rep, stage_list=(2, 3), case_names=None, whole=True, warps_list=(4,),
                         col_blocks=(64,), col_stage_list=(3,), col_tma_list=(True,), piece_tma_list=(True,)):
    s = q.shape[2]
    scale = q.shape[-1] ** -0.5
    cases = [("random", (3500, 100), False), ("random", (30, 800), False), ("planted", (1000, 6096), True)]
    if case_names:
        cases = [c for c in cases if f"{c[1][0]},{c[1][1]}" in case_names]
    for label, (nv, ns), planted in cases:
        if planted:
            v_idx, s_idx = planted_vertical_slash(1, q.shape[1], s, nv, ns, "cuda")
        else:
            v_idx, s_idx = mf.estimate_vertical_slash(q, k, nv, ns)
        index = build_vertical_slash_index(v_idx, s_idx, s, 64)
        frac = computed_fraction(index, 64).item()
        group = f"vs {label} ({nv},{ns}) f={frac:.3f}"
        report(group, "index build", median_ms(lambda: build_vertical_slash_index(v_idx, s_idx, s, 64), rep_ms=rep))
        base = launch_vertical_slash(q, k, v, index, 64, scale, 4, 3)
        for stages in stage_list:
            for warps in warps_list:
                for col_block, col_stages, col_tma, piece_tma in itertools.product(
                        col_blocks, col_stage_list, col_tma_list, piece_tma_list):
                    name = f"stages={stages} warps={warps} col_block={col_block}"
                    name += f" col_stages={col_stages or stages} col_tma={int(col_tma)} piece_tma={int(piece_tma)}"
                    args = (q, k, v, index, 64, scale, warps, stages, col_block, col_stages, col_tma, piece_tma)
                    try:
                        out = launch_vertical_slash(*args)
                        ms = median_ms(lambda: launch_vertical_slash(*args), rep_ms=rep)
                    except Exception as exc:  # a configuration that does not compile is a result too
                        print(f"{group} {name}: {type(exc).__name__}: {str(exc)[:300]}")
                        continue
                    tile_flops = frac * 4 * q.shape[1] * q.shape[-1] * s * (s + 64) / 2
                    report(group, name, ms, max_abs_diff=diff(out, base), tflops=tile_flops / ms / 1e9)
        whole = mf.dynamic_vertical_slash_attention if whole and not planted else None
        if whole is not None:
            report(group, "whole (estimate+index+kernel)",
                   median_ms(lambda: whole(q, k, v, nv, ns), rep_ms=rep))


def fallback_decision(q, k, rep, budgets=((1000, 6096), (30, 800), (3500, 100))):
    """Time the dense-fallback decision: from the sorted indices (what the op does) against
    building the whole index and reading its computed fraction (what the op did before)."""
    from custom_ops.vertical_slash.index import sort_indices, sorted_head_fractions

    s = q.shape[2]
    for nv, ns in budgets:
        v_idx, s_idx = mf.estimate_vertical_slash(q, k, nv, ns)
        group = f"fallback decision ({nv},{ns})"
        exact = computed_fraction(build_vertical_slash_index(v_idx, s_idx, s, 64), 64).item()
        counted = sorted_head_fractions(sort_indices(v_idx, s_idx, s, 64), 64).mean().item()
        report(group, "whole index + computed_fraction", median_ms(
            lambda: computed_fraction(build_vertical_slash_index(v_idx, s_idx, s, 64), 64).item(), rep_ms=rep),
            fraction=exact)
        report(group, "sorted indices + sorted_head_fractions", median_ms(
            lambda: sorted_head_fractions(sort_indices(v_idx, s_idx, s, 64), 64).mean().item(), rep_ms=rep),
            fraction=counted)


def _flex_run(q, k, v, mask, options):
    scale = q.shape[-1] ** -0.5
    seq_len = q.shape[2]
    padded = flex_padded_length(seq_len)
    if padded != seq_len:
        q, k, v = (torch.nn.functional.pad(t, (0, 0, 0, padded - seq_len)) for t in (q, k, v))
    q5, k5, v5 = (t.contiguous().unflatten(2, (-1, FLEX_ALIGN)) for t in (q, k, v))
    return _compiled_flex(q.device)(q5, k5, v5, mask, scale, True, options)


def sweep_block_sparse(q, k, v, rep, option_names=None, sweep_select=True):
    s = q.shape[2]
    scores = pooled_tile_scores(q, k, 64)
    nb = scores.shape[2]
    report("bs select", "pool q and k", median_ms(lambda: (pool_tiles(q, 64), pool_tiles(k, 64)), rep_ms=rep))
    report("bs select", "torch topk (old)", median_ms(lambda: _top_tiles_torch(scores, 100), rep_ms=rep))
    report("bs select", "top_tiles Triton", median_ms(lambda: top_tiles(scores, 100), rep_ms=rep))
    from custom_ops.top_tiles.kernel import launch_top_tiles

    t_base, c_base = launch_top_tiles(scores, 100)
    for chunk in (256, 512, 1024, 2048) if sweep_select else ():
        for warps in (2, 4, 8):
            t, c = launch_top_tiles(scores, 100, chunk=chunk, num_warps=warps)
            same = bool(torch.equal(t, t_base) and torch.equal(c, c_base))
            report("bs select", f"  top_tiles chunk={chunk} warps={warps}",
                   median_ms(lambda: launch_top_tiles(scores, 100, chunk=chunk, num_warps=warps), rep_ms=rep), same=same)
    t_old, c_old = _top_tiles_torch(scores, 100)
    t_new, c_new = top_tiles(scores, 100)
    report("bs select", "count agreement", float((c_old == c_new).float().mean().item()))
    report("bs select", "whole select_block_sparse_tiles", median_ms(lambda: mf.select_block_sparse_tiles(q, k, 100), rep_ms=rep))
    masks = {
        "unsorted": block_sparse_block_mask(t_old, c_old, s, 64),
        "ascending": block_sparse_block_mask(t_new, c_new, s, 64),
    }
    base_opts = _kernel_options(q, masks["ascending"])
    option_sets = {
        "current": {},
        "no_tma": {"USE_TMA": False},
        "rows_safe": {"ROWS_GUARANTEED_SAFE": True},
        "stages2": {"num_stages": 2},
        "stages4": {"num_stages": 4},
        "warps8": {"num_warps": 8},
        "warps8_stages4": {"num_warps": 8, "num_stages": 4},
    }
    if option_names:
        option_sets = {n: o for n, o in option_sets.items() if n in option_names}
    base = None
    tiles = sum(min(m + 1, 101) for m in range(nb)) * q.shape[1]
    for order, mask in masks.items():
        for name, extra in option_sets.items():
            if order == "unsorted" and name != "current":
                continue
            opts = {**base_opts, **extra}
            try:
                out = _flex_run(q, k, v, mask, opts)
                ms = median_ms(lambda: _flex_run(q, k, v, mask, opts), rep_ms=rep)
            except Exception as exc:
                print(f"flex {order} {name}: {type(exc).__name__}: {str(exc)[:200]}")
                continue
            base = out if base is None else base
            report("bs flex kernel", f"{order} {name}", ms, max_abs_diff=diff(out[:, :, :s], base[:, :, :s]) if order == "ascending" else 0.0,
                   tflops=tiles * 4 * 64 * 64 * q.shape[-1] / ms / 1e9)
    report("bs", "block_sparse_attention (whole)", median_ms(lambda: mf.block_sparse_attention(q, k, v, 100), rep_ms=rep))
    from minference_flex.ops.flex import a_shape_block_mask

    a_mask = a_shape_block_mask(1, q.shape[1], flex_padded_length(s), 128, 4096, q.device)
    a_opts = _kernel_options(q, a_mask)
    for name, extra in {"current": {}, "no_tma": {"USE_TMA": False}}.items():
        opts = {**a_opts, **extra}
        report("a-shape flex kernel", name, median_ms(lambda: _flex_run(q, k, v, a_mask, opts), rep_ms=rep))


def _synthetic_vs(heads, seq_len, n_cols, n_offsets, seed=0):
    """v_idx: the 30 sink columns plus random ones (n_cols in all); s_idx: offsets 0..NS-1,
    the estimator's forced local band widened (on CUDA)."""
    gen = torch.Generator().manual_seed(seed)
    cols = torch.cat([torch.arange(30).expand(heads, 30),
                      torch.randint(30, seq_len, (heads, max(n_cols - 30, 0)), generator=gen)], -1)
    offsets = torch.arange(n_offsets).expand(heads, n_offsets)
    return cols[None].cuda(), offsets[None].cuda()


def marginal_costs(q, k, v, rep):
    """What one more key tile costs the vertical-slash kernel, by loop: kernel time against
    computed tiles over index sets that differ in one loop's work (columns in unmasked TMA
    chunks; a widening local band; scattered or local offsets in band pieces).
    Each set's tile TFLOP/s, and the marginal TFLOP/s between neighbours."""
    s = q.shape[2]
    heads = q.shape[1]
    scale = q.shape[-1] ** -0.5
    tile_flops = 4 * 64 * 64 * q.shape[-1]
    dense_tiles = heads * (s // 64) * (s // 64 + 1) / 2

    def measure(group, name, v_idx, s_idx):
        index = build_vertical_slash_index(v_idx, s_idx, s, 64)
        tiles = computed_fraction(index, 64).item() * dense_tiles
        ms = median_ms(lambda: launch_vertical_slash(q, k, v, index, 64, scale), rep_ms=rep)
        report(group, name, ms, tiles=tiles, tflops=tiles * tile_flops / ms / 1e9)
        return ms, tiles

    def series(group, sets):
        prev = None
        for name, (v_idx, s_idx) in sets:
            ms, tiles = measure(group, name, v_idx, s_idx)
            if prev is not None and tiles > prev[1]:
                report(group, f"  marginal {prev[2]} -> {name}", ms - prev[0],
                       tflops=(tiles - prev[1]) * tile_flops / (ms - prev[0]) / 1e9)
            prev = (ms, tiles, name)

    series("marginal: columns (NS=100)", [(f"NV={n}", _synthetic_vs(heads, s, n, 100)) for n in (1750, 3500, 7000)])
    series("marginal: band (NV=3500)", [(f"NS={n}", _synthetic_vs(heads, s, 3500, n)) for n in (1, 100, 300, 600)])
    est = [(f"NS={n} estimated", mf.estimate_vertical_slash(q, k, 30, n)) for n in (400, 800, 1600)]
    series("marginal: scattered pieces (NV=30)", est)
    # the same number of tiles in one contiguous run of offsets: pieces without scatter
    series("marginal: local pieces (NV=30)", [(f"NS={n} local", _synthetic_vs(heads, s, 30, n)) for n in (25600, 51200)])


def block_sparse_locality(q, k, v, rep):
    """Block-sparse FlexAttention with the same tile count per query tile, chosen at random
    (what the estimator picks on random input) and as the 100 tiles just before the diagonal:
    how much of the random figure is memory traffic that misses L2."""
    s = q.shape[2]
    nb = -(-s // 64)
    tiles_r, count_r = mf.select_block_sparse_tiles(q, k, 100)
    m = torch.arange(nb, device=q.device)[:, None]
    local = m - 100 + torch.arange(100, device=q.device)[None, :]
    count_l = torch.clamp(m[:, 0], max=100).to(torch.int32).expand_as(count_r).contiguous()
    local = torch.where(local >= 0, local, nb)
    local = torch.sort(local, dim=-1).values.to(torch.int32).expand_as(tiles_r).contiguous()
    tiles = sum(min(i + 1, 101) for i in range(nb)) * q.shape[1]
    for name, (t, c) in {"random (estimated)": (tiles_r, count_r), "local (m-100..m-1)": (local, count_l)}.items():
        mask = block_sparse_block_mask(t, c, s, 64)
        opts = _kernel_options(q, mask)
        ms = median_ms(lambda: _flex_run(q, k, v, mask, opts), rep_ms=rep)
        report("bs locality", name, ms, tflops=tiles * 4 * 64 * 64 * q.shape[-1] / ms / 1e9)


def fallback_profile(q, k, v, rep):
    """Where a dense fallback's time goes: the GPU kernels, with their summed CUDA time per
    call (torch.profiler), of cuDNN on pre-repeated K/V (the benchmark's baseline),
    `dense_attention` (GQA K/V, what a fallback runs) and vertical-slash (1000, 6096); then
    cuDNN once per GQA member on strided query views and unrepeated K/V, outputs copied into
    place, timed against `dense_attention`."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.profiler import ProfilerActivity, profile

    from perf.common import sdpa_dense

    group = q.shape[1] // k.shape[1]
    k_rep, v_rep = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    cases = {
        "cuDNN, K/V repeated beforehand": sdpa_dense(q, k_rep, v_rep, SDPBackend.CUDNN_ATTENTION),
        "dense_attention (GQA)": lambda: mf.dense_attention(q, k, v),
        "vertical-slash (1000, 6096)": lambda: mf.dynamic_vertical_slash_attention(q, k, v, 1000, 6096),
    }
    calls = 3
    for name, fn in cases.items():
        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                fn()
            torch.cuda.synchronize()
        events = sorted(prof.key_averages(), key=lambda e: -e.device_time_total)
        total = sum(e.device_time_total for e in events) / calls / 1e3
        report("fallback profile", name, total, kernels=len(events))
        for e in events[:12]:
            report("fallback profile", f"  {e.key[:60]}", e.device_time_total / calls / 1e3, count=e.count // calls)
    del k_rep, v_rep

    def per_member():
        out = torch.empty_like(q)
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            for g in range(group):
                out[:, g::group] = torch.nn.functional.scaled_dot_product_attention(
                    q[:, g::group], k, v, is_causal=True)
        return out

    ref = mf.dense_attention(q, k, v)
    report("fallback profile", "cuDNN per GQA member, copied into place", median_ms(per_member, rep_ms=rep),
           max_abs_diff=diff(per_member(), ref))
    report("fallback profile", "dense_attention (GQA)", median_ms(lambda: mf.dense_attention(q, k, v), rep_ms=rep))


def block_sparse_key_split(q, k, v, rep, parts_list=(2, 3, 4, 6), rounds=3):
    """Block-sparse FlexAttention in one pass against one pass per range of key tiles merged
    by log-sum-exp (`flex_attend` with a list of masks), on the estimator's tiles; masks prebuilt, then
    the whole path with its mask building. Alternating rounds, as the GPU clock drifts."""
    from minference_flex.ops.flex import block_sparse_key_split_masks, flex_attend

    s = q.shape[2]
    scale = q.shape[-1] ** -0.5
    tiles, count = mf.select_block_sparse_tiles(q, k, 100)
    one = block_sparse_block_mask(tiles, count, s, 64)
    split = {p: block_sparse_key_split_masks(tiles, count, s, 64, p) for p in parts_list}
    base = flex_attend(q, k, v, one, scale)
    n_tiles = sum(min(i + 1, 101) for i in range(-(-s // 64))) * q.shape[1]
    flops = n_tiles * 4 * 64 * 64 * q.shape[-1]
    for p, masks in split.items():
        report("bs key split", f"{p} passes: max abs diff", 0.0,
               max_abs_diff=diff(flex_attend(q, k, v, masks, scale), base))
    for r in range(rounds):
        ms = median_ms(lambda: flex_attend(q, k, v, one, scale), rep_ms=rep)
        report("bs key split", f"round {r}: 1 pass", ms, tflops=flops / ms / 1e9)
        for p, masks in split.items():
            ms = median_ms(lambda: flex_attend(q, k, v, masks, scale), rep_ms=rep)
            report("bs key split", f"round {r}: {p} passes + merge", ms, tflops=flops / ms / 1e9)
    for p in parts_list:
        report("bs key split", f"key-split masks, {p} passes", median_ms(
            lambda: block_sparse_key_split_masks(tiles, count, s, 64, p), rep_ms=rep))
    report("bs key split", "one mask", median_ms(lambda: block_sparse_block_mask(tiles, count, s, 64), rep_ms=rep))


def dense_chunks(q, k, v, rep, chunk_list=(8192, 16384, 32768, 65536), rounds=2):
    """Dense causal attention in row chunks of cuDNN calls (`custom_ops.dense_causal`) against
    one cuDNN call: the pieces' own rates (causal squares, non-causal rectangles), the merge,
    then each chunk size in alternating rounds with the baseline (cuDNN on pre-repeated K/V)."""
    from torch.nn.attention import SDPBackend

    from custom_ops.dense_causal import chunk_bounds, chunked_causal_attention
    from custom_ops.dense_causal.kernel import merge_two_into
    from custom_ops.dense_causal.op import _cudnn_attend
    from perf.common import sdpa_dense

    s, heads, dim = q.shape[2], q.shape[1], q.shape[3]
    scale = dim**-0.5
    group = heads // k.shape[1]
    flops = 4 * heads * dim * s * s / 2
    k_rep, v_rep = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    baseline = sdpa_dense(q, k_rep, v_rep, SDPBackend.CUDNN_ATTENTION)
    ref = baseline()
    for rows in (s // 2, s // 4):
        ms = median_ms(lambda: _cudnn_attend(q[:, :, :rows], k[:, :, :rows], v[:, :, :rows], True, scale), rep_ms=rep)
        report("dense chunks", f"piece: causal {rows}", ms, tflops=4 * heads * dim * rows * rows / 2 / ms / 1e9)
        ms = median_ms(lambda: _cudnn_attend(q[:, :, s - rows:], k[:, :, :s - rows], v[:, :, :s - rows], False, scale),
                       rep_ms=rep)
        report("dense chunks", f"piece: rectangle {rows} x {s - rows}", ms,
               tflops=4 * heads * dim * rows * (s - rows) / ms / 1e9)
    half = s // 2
    a, lse_a = _cudnn_attend(q[:, :, half:], k[:, :, half:], v[:, :, half:], True, scale)
    b, lse_b = _cudnn_attend(q[:, :, half:], k[:, :, :half], v[:, :, :half], False, scale)
    out = torch.empty_like(q)
    report("dense chunks", "merge of half the rows", median_ms(lambda: merge_two_into(out[:, :, half:], a, lse_a, b, lse_b),
                                                                rep_ms=rep))
    chunk_list = [c for c in chunk_list if c < s]
    for c in chunk_list:
        got = chunked_causal_attention(q, k, v, scale, c, _cudnn_attend)
        report("dense chunks", f"{c} rows: max abs diff", 0.0, max_abs_diff=diff(got, ref),
               chunks=len(chunk_bounds(s, c)) - 1)
    del got, ref
    for r in range(rounds):
        ms = median_ms(baseline, rep_ms=rep)
        report("dense chunks", f"round {r}: one cuDNN call, K/V repeated", ms, tflops=flops / ms / 1e9)
        ms = median_ms(lambda: mf.dense_attention(q, k, v), rep_ms=rep)
        report("dense chunks", f"round {r}: dense_attention (shipped)", ms, tflops=flops / ms / 1e9)
        for c in chunk_list:
            ms = median_ms(lambda: chunked_causal_attention(q, k, v, scale, c, _cudnn_attend), rep_ms=rep)
            report("dense chunks", f"round {r}: chunks of {c} rows", ms, tflops=flops / ms / 1e9)
    del k_rep, v_rep


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-len", type=int, default=131072)
    parser.add_argument("--only", nargs="+", default=["estimate", "vs", "bs"])
    parser.add_argument("--rep-ms", type=float, default=300)
    parser.add_argument("--stages", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--warps", type=int, nargs="+", default=[4])
    parser.add_argument("--col-blocks", type=int, nargs="+", default=[64])
    parser.add_argument("--col-stages", nargs="+", default=["3"],
                        help="stages of the unmasked column loop ('same': the kernel-wide count)")
    parser.add_argument("--col-tma", type=int, nargs="+", default=[1], help="TMA loads in the column loop: 0 1")
    parser.add_argument("--piece-tma", type=int, nargs="+", default=[1], help="TMA loads in the plain-piece loop: 0 1")
    parser.add_argument("--vs-cases", nargs="*", default=None, help="e.g. 3500,100 30,800")
    parser.add_argument("--skip-dense", action="store_true")
    parser.add_argument("--flex-options", nargs="*", default=None,
                        help="subset of the flex option sets (given: the top-k launch sweep is skipped)")
    parser.add_argument("--dense-chunks", type=int, nargs="+", default=[8192, 16384, 32768, 65536],
                        help="rows per chunk for --only dense_chunks")
    parser.add_argument("--rounds", type=int, default=None,
                        help="alternating rounds of dense_chunks (default 2) / bs_split (default 3)")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    s = args.seq_len
    print(machine())
    torch.manual_seed(0)
    q = torch.randn(1, 32, s, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 8, s, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    from torch.nn.attention import SDPBackend

    from perf.common import sdpa_dense

    if not args.skip_dense:
        k_rep, v_rep = k.repeat_interleave(4, 1), v.repeat_interleave(4, 1)
        t_dense = median_ms(sdpa_dense(q, k_rep, v_rep, SDPBackend.CUDNN_ATTENTION), rep_ms=args.rep_ms)
        del k_rep, v_rep
        report("dense", "cuDNN SDPA", t_dense, tflops=4 * 32 * 128 * s * s / 2 / t_dense / 1e9)
    if "estimate" in args.only:
        estimate_breakdown(q, k, args.rep_ms)
    if "fallback" in args.only:
        fallback_decision(q, k, args.rep_ms)
    if "bs" in args.only:
        sweep_block_sparse(q, k, v, args.rep_ms, args.flex_options, sweep_select=not args.flex_options)
    if "marginal" in args.only:
        marginal_costs(q, k, v, args.rep_ms)
    if "fallback_profile" in args.only:
        fallback_profile(q, k, v, args.rep_ms)
    if "dense_chunks" in args.only:
        dense_chunks(q, k, v, args.rep_ms, args.dense_chunks, args.rounds or 2)
    if "bs_split" in args.only:
        block_sparse_key_split(q, k, v, args.rep_ms, rounds=args.rounds or 3)
    if "bs_locality" in args.only:
        block_sparse_locality(q, k, v, args.rep_ms)
    if "vs" in args.only:
        sweep_vertical_slash(q, k, v, args.rep_ms, args.stages, args.vs_cases, whole=not args.skip_dense,
                             warps_list=args.warps, col_blocks=args.col_blocks,
                             col_stage_list=[None if c == "same" else int(c) for c in args.col_stages],
                             col_tma_list=[bool(t) for t in args.col_tma],
                             piece_tma_list=[bool(t) for t in args.piece_tma])
    if args.out:
        write_json(args.out, {"machine": machine(), "seq_len": s, "rows": ROWS})


if __name__ == "__main__":
    main()
