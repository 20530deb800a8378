"""Training benchmark: forward + backward of each sparse pattern against cuDNN SDPA forward +
backward, in the same run.

B=1, 32 query / 8 kv heads, D=128, bf16 by default. Every sparse figure includes estimation
and index/mask building (the backward of vertical-slash rebuilds its index). Columns:
- ms / x_cudnn: forward + backward (`torch.autograd.grad` of q, k, v for a random output
  gradient), and its ratio to cuDNN SDPA's forward + backward (K/V repeated outside the timed
  region, as cuDNN's best);
- fwd_ms, bwd_ms: the forward alone (grad-enabled: it saves what the backward needs) and the
  backward alone (the same graph, retained);
- bwd_tile_tflops: backward FLOPs of the tiles the vertical-slash and block-sparse kernels compute (2.5x the
  forward's per tile, as for dense attention) over the backward time, beside cuDNN's
  backward TFLOP/s on the dense causal tiles (`cudnn_bwd_tflops`);
- fwd_kernel_ms, bwd_kernel_w4_ms / bwd_kernel_w8_ms: the block-sparse training kernels alone (forward;
  backward at 4 and 8 warps);
- bwd_kernel_ms: the vertical-slash backward kernels alone (prepared index and log-sum-exp);
- bwd_launch_sweep_ms (with --launch-sweep): the vertical-slash and block-sparse backward
  kernels alone at each (num_warps, num_stages) of LAUNCHES, to choose the launch defaults.
Goals (issue 18, 128K): vertical-slash (3500, 100) <= 0.10, (30, 800) <= 0.50, block-sparse
top 100 <= 0.20, A-shape (128, 4096) <= 0.12; backward tile rate >= 60% of cuDNN's.

With --model-step it times training steps of a 1B-parameter Llama shape instead (16 layers,
hidden 2048, 32/8 heads, MLP 8192, vocab 128256, random bf16 weights, activation
checkpointing): forward, a loss on the last `--loss-tokens` positions (the [S, vocab] logits
of every position would not fit; both sides compute the same loss), backward; sdpa against
minference_flex with the first 16 layers of the shipped Llama-3-8B-262K pattern config, in
random and structured mode (perf/bench_e2e.py's planted indices), with peak memory. Goal at
64K: <= 0.5x the sdpa step in structured mode, peak memory no higher than sdpa's.

Usage (on a GPU):
    python perf/bench_train.py --lengths 131072 --out perf/results/train.json
    python perf/bench_train.py --model-step --lengths 65536 --out perf/results/train_step.json
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import minference_flex as mf  # noqa: E402
from custom_ops.block_sparse import launch_block_sparse_backward, launch_block_sparse_forward  # noqa: E402
from custom_ops.vertical_slash import build_vertical_slash_index, computed_fraction  # noqa: E402
from custom_ops.vertical_slash.backward import launch_vertical_slash_backward  # noqa: E402
from custom_ops.vertical_slash.kernel import launch_vertical_slash  # noqa: E402
from minference_flex.patterns.config import load_pattern_config, shipped_config_path  # noqa: E402
from minference_flex.ops.estimate import select_block_sparse_tiles  # noqa: E402
from perf.bench_e2e import SHAPES, planted_indices  # noqa: E402
from perf.common import (  # noqa: E402
    add_shape_arguments,
    machine,
    median_ms,
    print_row,
    print_table,
    vs_budgets,
    write_json,
)
from perf.planted import planted_vertical_slash  # noqa: E402

VS_BUDGETS = [(3500, 100), (30, 800)]
GOALS = {"vertical-slash (3500, 100)": 0.10, "vertical-slash (30, 800)": 0.50,
         "block-sparse top 100 of 64": 0.20, "A-shape (128, 4096)": 0.12}


def _timings(attend, inputs, grad_out, rep_ms):
    """(fwd+bwd ms, fwd ms, bwd ms) of attend(*inputs) with gradients to `inputs`."""
    def step():
        return torch.autograd.grad(attend(*inputs), inputs, grad_out)

    def forward():
        return attend(*inputs)

    total = median_ms(step, rep_ms=rep_ms)
    fwd = median_ms(forward, rep_ms=rep_ms)
    out = attend(*inputs)
    bwd = median_ms(lambda: torch.autograd.grad(out, inputs, grad_out, retain_graph=True), rep_ms=rep_ms)
    del out
    return total, fwd, bwd


# (num_warps, num_stages) of the backward kernels' launches that --launch-sweep times
LAUNCHES = [(4, 1), (4, 2), (4, 3), (8, 1), (8, 2), (8, 3)]


def _sweep(time_launch, launches):
    """{"wW sS": ms, or the error's first line where that launch does not compile or run}."""
    timed = {}
    for warps, stages in launches:
        try:
            timed[f"w{warps} s{stages}"] = round(time_launch(warps, stages), 3)
        except Exception as exc:  # noqa: BLE001 (e.g. Triton's out of shared memory)
            timed[f"w{warps} s{stages}"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    return timed


def _backward_kernels(q, k, v, grad_out, index, rep_ms, launches=()):
    """ms of the vertical-slash backward kernels alone at the default launch; with `launches`,
    also at each (num_warps, num_stages) of the list."""
    scale = q.shape[-1] ** -0.5
    lse = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
    out = launch_vertical_slash(q, k, v, index, 64, scale, lse=lse)

    def backward_ms(**launch):
        return median_ms(lambda: launch_vertical_slash_backward(grad_out, q, k, v, out, lse, index, 64, scale,
                                                                **launch), rep_ms=rep_ms)

    timed = {"bwd_kernel_ms": backward_ms()}
    if launches:
        timed["bwd_launch_sweep_ms"] = _sweep(lambda w, s: backward_ms(num_warps=w, num_stages=s), launches)
    return timed


def _block_sparse_kernels(q, k, v, grad_out, tiles, count, rep_ms, launches=()):
    """ms of the block-sparse training kernels alone: forward, and backward at 4 and 8 warps;
    with `launches`, the backward at each (num_warps, num_stages) of the list."""
    scale = q.shape[-1] ** -0.5
    forward = median_ms(lambda: launch_block_sparse_forward(q, k, v, tiles, count, 64, scale), rep_ms=rep_ms)
    out, lse = launch_block_sparse_forward(q, k, v, tiles, count, 64, scale)

    def backward_ms(**launch):
        return median_ms(lambda: launch_block_sparse_backward(grad_out, q, k, v, out, lse, tiles, count, 64, scale,
                                                              **launch), rep_ms=rep_ms)

    timed = {"fwd_kernel_ms": forward, **{f"bwd_kernel_w{w}_ms": backward_ms(num_warps=w) for w in (4, 8)}}
    if launches:
        timed["bwd_launch_sweep_ms"] = _sweep(lambda w, s: backward_ms(num_warps=w, num_stages=s), launches)
    return timed


def bench_length(seq_len, heads, kv_heads, head_dim, modes, rep_ms, vs_budgets=VS_BUDGETS, flex=True, on_row=None,
                 launches=()):
    """Rows of one length; on_row(row) is called as each row is measured; `launches`: the
    (num_warps, num_stages) at which the backward kernels are also timed alone."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    rows = []
    dtype = torch.bfloat16
    q = torch.randn(1, heads, seq_len, head_dim, device="cuda", dtype=dtype, requires_grad=True)
    k = torch.randn(1, kv_heads, seq_len, head_dim, device="cuda", dtype=dtype, requires_grad=True)
    v = torch.randn(1, kv_heads, seq_len, head_dim, device="cuda", dtype=dtype, requires_grad=True)
    grad_out = torch.randn(q.shape, device="cuda", dtype=dtype)
    group = heads // kv_heads
    k_rep = k.detach().repeat_interleave(group, 1).requires_grad_()
    v_rep = v.detach().repeat_interleave(group, 1).requires_grad_()

    def cudnn(q, k, v):
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

    t_cudnn, f_cudnn, b_cudnn = _timings(cudnn, (q, k_rep, v_rep), grad_out, rep_ms)
    del k_rep, v_rep
    dense_flops = 4 * heads * head_dim * seq_len * seq_len / 2
    cudnn_bwd_tflops = 2.5 * dense_flops / b_cudnn / 1e9

    def add(name, mode, times, **extra):
        total, fwd, bwd = times
        rows.append({"S": seq_len, "pattern": name, "mode": mode, "ms": total, "x_cudnn": total / t_cudnn,
                     "fwd_ms": fwd, "bwd_ms": bwd, "goal": GOALS.get(name, ""), **extra})
        if on_row is not None:
            on_row(rows[-1])

    add("dense SDPA cuDNN", "-", (t_cudnn, f_cudnn, b_cudnn), tflops_bwd=cudnn_bwd_tflops)
    add("dense_attention (op, recomputing backward)", "-", _timings(mf.dense_attention, (q, k, v), grad_out, rep_ms))

    for nv, ns in vs_budgets:
        for mode in modes:
            if mode == "random":
                v_idx, s_idx = mf.estimate_vertical_slash(q.detach(), k.detach(), nv, ns)

                def attend(q, k, v, nv=nv, ns=ns):
                    return mf.dynamic_vertical_slash_attention(q, k, v, nv, ns)
            else:
                v_idx, s_idx = planted_vertical_slash(1, heads, seq_len, nv, ns, "cuda")

                def attend(q, k, v, nv=nv, ns=ns, v_idx=v_idx, s_idx=s_idx):
                    mf.estimate_vertical_slash(q, k, nv, ns)  # its cost, not its indices
                    return mf.vertical_slash_sparse_attention(q, k, v, v_idx, s_idx)

            index = build_vertical_slash_index(v_idx, s_idx, seq_len, 64)
            frac = computed_fraction(index, 64).item()
            times = _timings(attend, (q, k, v), grad_out, rep_ms)
            tile_flops = 2.5 * frac * dense_flops * (seq_len / 64 + 1) / (seq_len / 64)
            kernels = _backward_kernels(q.detach(), k.detach(), v.detach(), grad_out, index, rep_ms, launches)
            add(f"vertical-slash ({nv}, {ns})", mode, times, computed_fraction=frac,
                bwd_tile_tflops=tile_flops / times[2] / 1e9, cudnn_bwd_tflops=cudnn_bwd_tflops, **kernels)

    if flex:
        tiles_per_head = seq_len // 64 * (seq_len // 64 + 1) / 2
        tiles, count = select_block_sparse_tiles(q.detach(), k.detach(), 100, 64)
        kernels = _block_sparse_kernels(q.detach(), k.detach(), v.detach(), grad_out, tiles, count, rep_ms,
                                         launches)
        frac = (count.sum().item() / heads + seq_len // 64) / tiles_per_head  # chosen + own tiles
        times = _timings(lambda q, k, v: mf.block_sparse_attention(q, k, v, 100), (q, k, v), grad_out, rep_ms)
        tile_flops = 2.5 * frac * dense_flops * (seq_len / 64 + 1) / (seq_len / 64)
        add("block-sparse top 100 of 64", "random", times, computed_fraction=frac,
            bwd_tile_tflops=tile_flops / times[2] / 1e9, cudnn_bwd_tflops=cudnn_bwd_tflops, **kernels)
        add("A-shape (128, 4096)", "random",
            _timings(lambda q, k, v: mf.streaming_forward(q, k, v, 128, 4096), (q, k, v), grad_out, rep_ms))
    return rows


def llama_1b():
    """Random-weight 1B Llama shape in bf16 on the GPU, SDPA attention, training mode."""
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, rope_theta=500000.0,
        max_position_embeddings=262144, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")
    model.gradient_checkpointing_enable()
    return model.train()


def training_step(model, ids, loss_tokens):
    """Seconds and peak GiB of forward, loss on the last `loss_tokens` positions, backward."""
    model.zero_grad(set_to_none=True)
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.synchronize()
    start = time.perf_counter()
    logits = model(ids[:, :-1], logits_to_keep=loss_tokens, use_cache=False).logits
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), ids[0, -loss_tokens:])
    loss.backward()
    torch.cuda.synchronize()
    return time.perf_counter() - start, torch.cuda.max_memory_allocated() / 2**30


def bench_model_step(lengths, repeats, loss_tokens, min_sparse_len):
    import contextlib

    model = llama_1b()
    # the first 16 layers of the shipped Llama-3-8B-262K config (32 layers of 32 heads)
    patterns = load_pattern_config(shipped_config_path(SHAPES["llama3-8b"][1]), 32, 32)[:16]
    modes = {"sdpa": None, "minference_flex random": contextlib.nullcontext,
             "minference_flex structured": planted_indices}
    rows = []
    for seq_len in lengths:
        ids = torch.randint(0, 128256, (1, seq_len + 1), device="cuda")
        base = None
        for mode, context in modes.items():
            if context is None:
                if getattr(model, "_minference_flex_state", None) is not None:
                    mf.restore(model)
                context = contextlib.nullcontext
            else:
                mf.compile(model, patterns, min_sparse_len=min_sparse_len)
            try:
                with context():
                    training_step(model, ids, loss_tokens)  # untimed: builds, autotunes
                    runs = sorted(training_step(model, ids, loss_tokens) for _ in range(repeats))
                seconds, peak = runs[len(runs) // 2][0], max(r[1] for r in runs)
                row = {"S": seq_len, "mode": mode, "seconds": seconds, "peak_gib": peak}
            except torch.OutOfMemoryError as exc:
                row = {"S": seq_len, "mode": mode, "error": f"OOM: {str(exc).splitlines()[0]}"}
            if mode == "sdpa" and "seconds" in row:
                base = row
            if base is not None and "seconds" in row:
                row["x_sdpa"] = row["seconds"] / base["seconds"]
                row["peak_over_sdpa"] = row["peak_gib"] / base["peak_gib"]
            print_row(row)
            rows.append(row)
    return rows


TRAIN_COLUMNS = ["S", "pattern", "mode", "ms", "x_cudnn", "goal", "fwd_ms", "bwd_ms", "computed_fraction",
                 "bwd_tile_tflops", "cudnn_bwd_tflops", "tflops_bwd", "bwd_kernel_ms",
                 "fwd_kernel_ms", "bwd_kernel_w4_ms", "bwd_kernel_w8_ms"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_arguments(parser, [131072], VS_BUDGETS)
    parser.add_argument("--launch-sweep", action="store_true",
                        help="also time the backward kernels alone at each (num_warps, num_stages) of "
                        f"{LAUNCHES} (bwd_launch_sweep_ms)")
    parser.add_argument("--model-step", action="store_true", help="time training steps of the 1B Llama shape")
    parser.add_argument("--repeats", type=int, default=3, help="with --model-step: timed steps per figure (median)")
    parser.add_argument("--loss-tokens", type=int, default=1024, help="with --model-step: positions the loss covers")
    parser.add_argument("--min-sparse-len", type=int, default=mf.Options.min_sparse_len,
                        help="with --model-step: minference_flex option")
    parser.add_argument("--out", default="perf/results/train.json")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench_train needs a CUDA GPU")
    # the backward-alone figure replays one retained graph; compiled backwards that donate
    # their saved buffers (FlexAttention's, under A-shape) refuse retain_graph=True
    import torch._functorch.config as functorch_config

    functorch_config.donated_buffer = False
    info = machine()
    print(info)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    if args.model_step:
        rows = bench_model_step(args.lengths, args.repeats, args.loss_tokens, args.min_sparse_len)
        write_json(args.out, {"machine": info, "args": vars(args), "rows": rows})
        return
    budgets = vs_budgets(args)
    rows = []

    def on_row(row):  # printed and written as measured: a run cut short keeps its rows
        rows.append(row)
        print_row(row)
        write_json(args.out, {"machine": info, "args": vars(args), "rows": rows})

    for seq_len in args.lengths:
        bench_length(seq_len, args.heads, args.kv_heads, args.head_dim, args.modes, args.rep_ms,
                     budgets, not args.no_flex, on_row, LAUNCHES if args.launch_sweep else ())
        torch.cuda.empty_cache()
    print_table(rows, TRAIN_COLUMNS)


if __name__ == "__main__":
    main()
