"""End-to-end pre-fill: a Llama-3-8B-shaped (or Qwen2.5-7B-1M-shaped) model with random
weights, minference_flex against transformers' own `sdpa` and `flex_attention` in the same run.

With `--chunk N` the prompt is pre-filled in chunks of N tokens over a KV cache (a loop of
forwards over a `DynamicCache`, as `generate(..., prefill_chunk_size=N)` does; `--offload`
keeps each layer's K/V in host memory between chunks: `mf.HostOffloadedCache`): every mode runs the same chunks. The
`dense` mode is minference_flex's dense path (cuDNN row chunks, no [q_len, kv_len] mask);
`sdpa` is what transformers itself runs, which builds a [q_len, kv_len] mask for a chunk.

One timed pre-fill per figure (`--repeats` for a median; batch 1, bf16, `logits_to_keep=1`, KV
cache kept as in serving) after one untimed pre-fill at the same length for every mode but sdpa,
wall time with the GPU synchronised, and peak allocated memory. Modes of minference_flex:
- random: the estimator picks the indices from the random model's q/k (scattered diagonals,
  the worst case for any tile kernel);
- structured (labelled so): the estimator still runs on every layer and its cost counts, but the
  kernel is handed planted indices of a realistic shape (perf/planted.py: sinks, a local band,
  columns, diagonals near the main one) with each head's own budgets.

Usage (GPU): python perf/bench_e2e.py --lengths 32768 131072 262144 --out perf/results/e2e.json
    [--config searched=perf/results/searched_2026-11-24_llama3_8b_32k.json] [--layers 32]
    [--chunk 32768 [--offload]] [--shape qwen2.5-7b-1m] [--gpus 2]

With `--gpus N` the layers are spread over N GPUs by an accelerate device map (pipeline: one
GPU works at a time); peaks are then per GPU (`peak_gib_per_gpu`), `peak_gib` the largest.

With `--profile N` every mode but sdpa runs one more pre-fill under the PyTorch profiler
(untimed) and its N GPU kernels of most total time are printed and written to the row
(`profile`: name, total ms, calls): where the pre-fill's time goes.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import os
import resource
import sys
import time

# 256K on an 80 GB card fits only without allocator fragmentation (seen: 14 GiB reserved but
# unallocated when sdpa ran out of memory); must be set before CUDA starts
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import minference_flex as mf  # noqa: E402
from minference_flex.patterns import get_pattern, override_estimator  # noqa: E402
from minference_flex.patterns.vertical_slash import VERTICAL_SLASH  # noqa: E402
from minference_flex.patch.hf import cache_keyword  # noqa: E402
from minference_flex.patch.offload import HostOffloadedCache  # noqa: E402
from minference_flex.patterns.config import shipped_config_path  # noqa: E402
from perf.common import llama3_8b, machine, print_row, qwen25_7b_1m, write_json  # noqa: E402
from perf.planted import planted_per_head  # noqa: E402

SHAPES = {  # model builder and the name its shipped config is found by
    "llama3-8b": (llama3_8b, "gradientai/Llama-3-8B-Instruct-262k"),
    "qwen2.5-7b-1m": (qwen25_7b_1m, "Qwen/Qwen2.5-7B-Instruct-1M"),
}


@contextlib.contextmanager
def planted_indices():
    """Structured mode: run the real estimator (its cost counts), hand the kernel planted indices."""
    real = get_pattern(VERTICAL_SLASH).estimator

    # kept in pinned host memory and copied in per call: a chunked pre-fill sees a new key length
    # every chunk, and holding every length's indices on the GPU would add to the peak measured
    @functools.lru_cache(maxsize=None)
    def planted(batch, seq_len, verticals, slashes):
        v_idx, s_idx = planted_per_head(batch, seq_len, list(verticals), list(slashes), "cpu")
        pinned = torch.cuda.is_available()
        return (v_idx.pin_memory(), s_idx.pin_memory()) if pinned else (v_idx, s_idx)

    def estimate(q, k, verticals, slashes, last_q, scale):
        real(q, k, verticals, slashes, last_q, scale)
        v_idx, s_idx = planted(q.shape[0], k.shape[2], tuple(verticals), tuple(slashes))
        return v_idx.to(q.device, non_blocking=True), s_idx.to(q.device, non_blocking=True)

    with override_estimator(VERTICAL_SLASH, estimate):
        yield


def _synchronize_all() -> None:
    for device in range(torch.cuda.device_count()):
        torch.cuda.synchronize(device)


def prefill_once(model, ids, chunk: int = 0, offload: bool = False, progress: bool = False,
                 generate: bool = False) -> tuple[float, float]:
    """Seconds and peak GiB of one pre-fill (KV cache kept, last logits only), in one forward
    or in chunks of `chunk` tokens over a `DynamicCache` (offloaded to the host if asked): a
    loop of forwards, or with `generate` `model.generate(ids, prefill_chunk_size=chunk,
    max_new_tokens=1)` itself (its one new token included).
    Every visible GPU is synchronised and its peak counted: the peak is the largest one's;
    `peaks_per_gpu()` gives each GPU's."""
    from transformers import DynamicCache

    gc.collect()
    torch.cuda.empty_cache()
    for device in range(torch.cuda.device_count()):
        torch.cuda.reset_peak_memory_stats(device)
    _synchronize_all()
    start = time.perf_counter()
    with torch.no_grad():
        if chunk:
            cache = HostOffloadedCache(model.config) if offload else DynamicCache(config=model.config)
            cached = {cache_keyword(model): cache}
            if generate:
                out = model.generate(ids, max_new_tokens=1, do_sample=False, prefill_chunk_size=chunk,
                                     attention_mask=torch.ones_like(ids), **cached)
            else:
                for a in range(0, ids.shape[1], chunk):
                    out = model(ids[:, a:a + chunk], logits_to_keep=1, use_cache=True, **cached)
                    if progress:  # synchronising once a chunk costs nothing measurable at these sizes
                        _synchronize_all()
                        print(f"  {a + chunk} tokens: {time.perf_counter() - start:.1f} s, "
                              f"host {host_peak_gib():.1f} GiB", flush=True)
        else:
            out = model(ids, logits_to_keep=1, use_cache=True)
    _synchronize_all()
    seconds = time.perf_counter() - start
    del out
    return seconds, max(peaks_per_gpu())


def kernel_profile(fn, top: int) -> list[dict]:
    """The `top` GPU kernels of most total device time over one call of fn(): name, ms, calls."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
    events = [e for e in prof.key_averages() if getattr(e, "device_time_total", 0) > 0]
    events.sort(key=lambda e: e.device_time_total, reverse=True)
    return [{"kernel": e.key[:120], "ms": e.device_time_total / 1e3, "calls": e.count} for e in events[:top]]


def host_peak_gib() -> float:
    """Peak resident host memory of this process so far, GiB (pinned cache blocks included)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def peaks_per_gpu() -> list[float]:
    """Peak allocated GiB of each visible GPU since the last `prefill_once` began."""
    return [torch.cuda.max_memory_allocated(d) / 2**30 for d in range(torch.cuda.device_count())]


def spread_over_gpus(model, gpus: int):
    """`model` (on cuda:0) dispatched by accelerate with its decoder layers split evenly over
    cuda:0 .. cuda:gpus-1 (embeddings on the first, final norm and head on the last); each
    layer's attention and its KV cache live on its GPU."""
    import accelerate

    layers = model.config.num_hidden_layers
    device_map = {"model.embed_tokens": 0, "model.rotary_emb": 0, "model.norm": gpus - 1, "lm_head": gpus - 1}
    device_map.update({f"model.layers.{i}": i * gpus // layers for i in range(layers)})
    return accelerate.dispatch_model(model, device_map)


def layer_subset(path: str, layers: int) -> list:
    """The config at `path` (MInference's format) cut to `layers` layers spread evenly over the
    model's depth (all of them when it has no more), so that a shallow run sees the budgets of
    early, middle and late layers alike."""
    with open(path) as f:
        full = json.load(f)
    if layers >= len(full):
        return full
    return [full[i * len(full) // layers] for i in range(layers)]


def use(model, mode: str, config, min_sparse_len: int) -> contextlib.AbstractContextManager:
    """Switch the model to one mode; returns the context to run it in."""
    if getattr(model, "_minference_flex_state", None) is not None:
        mf.restore(model)
    if mode in ("sdpa", "flex_attention"):
        model.set_attn_implementation(mode)
        return contextlib.nullcontext()
    if mode == "dense":  # minference_flex's dense path everywhere
        mf.compile(model, config, min_sparse_len=2**40)
        return contextlib.nullcontext()
    mf.compile(model, config, min_sparse_len=min_sparse_len)
    return planted_indices() if mode.endswith("structured") else contextlib.nullcontext()


def modes_to_run(config_names, skip: list[str]) -> list[str]:
    """The modes in run order: sdpa, flex_attention, dense, then random and structured per
    config, less those that start with an entry of `skip`."""
    modes = ["sdpa", "flex_attention", "dense"]
    for name in config_names:
        modes += [f"minference_flex[{name}] random", f"minference_flex[{name}] structured"]
    return [m for m in modes if not any(m.startswith(s) for s in skip)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[32768, 131072, 262144])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--config", action="append", default=[], metavar="NAME=PATH",
                        help="extra pattern configs to run (random and structured modes)")
    parser.add_argument("--skip", nargs="*", action="extend", default=[],
                        help="modes to leave out, e.g. flex_attention (repeated --skip lists add up)")
    parser.add_argument("--repeats", type=int, default=1, help="timed pre-fills per figure (median)")
    parser.add_argument("--min-sparse-len", type=int, default=mf.Options.min_sparse_len,
                        help="minference_flex option (1 measures the sparse path at short lengths)")
    parser.add_argument("--chunk", type=int, default=0, help="pre-fill in chunks of this many tokens (0: one forward)")
    parser.add_argument("--offload", action="store_true",
                        help="with --chunk: keep the KV cache in host memory (mf.HostOffloadedCache)")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama3-8b")
    parser.add_argument("--gpus", type=int, default=1,
                        help="spread the layers over this many GPUs with an accelerate device map (pipeline)")
    parser.add_argument("--progress", action="store_true", help="with --chunk: print the time after every chunk")
    parser.add_argument("--generate", action="store_true",
                        help="with --chunk: pre-fill through model.generate(prefill_chunk_size=N, max_new_tokens=1)")
    parser.add_argument("--no-warmup", action="store_true",
                        help="skip the untimed runs (memory runs at full depth: the figure then includes compiles)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="print the N GPU kernels of most time of one more (untimed) pre-fill per mode but sdpa")
    parser.add_argument("--out", default="perf/results/e2e.json")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench_e2e needs a CUDA GPU")
    if args.offload and not args.chunk:
        parser.error("--offload needs --chunk")
    if args.generate and not args.chunk:
        parser.error("--generate needs --chunk")
    if args.generate and args.progress:
        parser.error("--progress times a loop of forwards; generate runs its own: pass one of them")
    if not 1 <= args.gpus <= torch.cuda.device_count():
        parser.error(f"--gpus must be in [1, {torch.cuda.device_count()}] (the visible GPUs), got {args.gpus}")
    build, shipped_name = SHAPES[args.shape]
    configs = {"shipped": shipped_config_path(shipped_name)}
    for spec in args.config:
        name, _, path = spec.partition("=")
        if not path or not os.path.exists(path):
            parser.error(f"--config wants NAME=PATH of an existing file, got {spec!r}")
        configs[name] = path
    config_paths = dict(configs)
    configs = {name: layer_subset(path, args.layers) for name, path in configs.items()}
    modes = modes_to_run(configs, args.skip)

    info = machine()
    print(info, flush=True)
    built = time.perf_counter()
    model = build(args.layers, name_or_path=shipped_name)
    print(f"model built in {time.perf_counter() - built:.0f} s", flush=True)
    if args.gpus > 1:
        model = spread_over_gpus(model, args.gpus)
    vocab = model.config.vocab_size
    gen = torch.Generator(device="cpu").manual_seed(0)
    rows = []
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    warm_len = max(20000, args.min_sparse_len) + (2 * args.chunk if args.chunk else 0)
    warm = torch.randint(0, vocab, (1, warm_len), generator=gen).cuda()
    run = functools.partial(prefill_once, chunk=args.chunk, offload=args.offload, progress=args.progress,
                            generate=args.generate)

    def config_of(mode: str) -> list:
        return configs[mode.split("[")[1].split("]")[0]] if "[" in mode else configs["shipped"]
    for mode in [] if args.no_warmup else modes:  # compile, autotune and Triton builds stay out of the timed calls
        with use(model, mode, config_of(mode), args.min_sparse_len):
            run(model, warm)
    for seq_len in args.lengths:
        ids = torch.randint(0, vocab, (1, seq_len), generator=gen).cuda()
        base = dense_base = None
        for mode in modes:
            try:
                with use(model, mode, config_of(mode), args.min_sparse_len):
                    if mode not in ("sdpa", "dense") and not args.no_warmup:
                        # untimed: flex compiles its mask and kernel per length, minference_flex
                        # may re-specialise once for a new length, and structured mode builds its
                        # planted indices per length (about 2 s at 32K on the host)
                        run(model, ids)
                    runs = [run(model, ids) for _ in range(args.repeats)]
                    if args.profile and mode != "sdpa":
                        profiled = kernel_profile(lambda: run(model, ids), args.profile)
                seconds = sorted(r[0] for r in runs)[len(runs) // 2]
                peak = max(r[1] for r in runs)
                row = {"S": seq_len, "mode": mode, "seconds": seconds, "peak_gib": peak,
                       "host_peak_gib": host_peak_gib()}
                if args.gpus > 1:
                    row["peak_gib_per_gpu"] = peaks_per_gpu()[: args.gpus]
                if args.profile and mode != "sdpa":
                    row["profile"] = profiled
                    for entry in profiled:
                        print(f"    {entry['ms']:9.1f} ms {entry['calls']:6d} x  {entry['kernel']}")
            except torch.OutOfMemoryError as exc:
                row = {"S": seq_len, "mode": mode, "error": f"OOM: {str(exc).splitlines()[0]}"}
            if mode == "sdpa" and "seconds" in row:
                base = row["seconds"]
            if mode == "dense" and "seconds" in row:
                dense_base = row["seconds"]
            if base and "seconds" in row:
                row["x_sdpa"] = row["seconds"] / base
            if dense_base and "seconds" in row:
                row["x_dense"] = row["seconds"] / dense_base
            rows.append(row)
            print_row({k: v for k, v in row.items() if k != "profile"})
            write_json(args.out, {"machine": info, "args": vars(args), "rows": rows,
                                  "configs": {name: shipped_or_path for name, shipped_or_path in config_paths.items()}})
        del ids
    print(f"\nS | mode | seconds | x sdpa | x dense | peak GiB   (chunk {args.chunk or 'none'}, {args.shape}, "
          f"{args.layers} layers{', offloaded cache' if args.offload else ''})")
    for r in rows:
        print(f"{r['S']} | {r['mode']} | {r.get('seconds', float('nan')):.2f} | {r.get('x_sdpa', float('nan')):.3f} | "
              f"{r.get('x_dense', float('nan')):.3f} | {r.get('peak_gib', float('nan')):.1f} {r.get('error', '')}")


if __name__ == "__main__":
    main()
