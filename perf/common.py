"""Shared benchmark helpers: machine line, result file names, shape options, median timing,
dense baselines, JSON output."""

from __future__ import annotations

import json
import os
import re

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from minference_flex.metrics.machine import git_commit, machine  # noqa: E402, F401  (re-exported)


def result_name(suite: str, date: str, commit: str, gpu: str, tag: str | None = None, ext: str = ".json") -> str:
    """The file name of a benchmark result: `SUITE_DATE_COMMIT_GPU[_TAG].json`, the GPU name with
    each run of characters other than letters, digits and dots turned into one "-", e.g.
    result_name("e2e", "2026-12-07", "63b5c04", "NVIDIA H100 80GB HBM3") ==
    "e2e_2026-12-07_63b5c04_NVIDIA-H100-80GB-HBM3.json". `tag` names one of several files of a
    suite (ext "" for a folder)."""
    parts = [suite, date, commit, re.sub(r"[^A-Za-z0-9.]+", "-", gpu).strip("-") or "cpu"]
    if tag:
        parts.append(tag)
    return "_".join(parts) + ext


def add_shape_arguments(parser, lengths: list[int], vs_budgets: list[tuple[int, int]]) -> None:
    """The attention shape and pattern options that the kernel benchmarks share (bench_kernels,
    bench_train): sequence lengths, heads, KV heads, head dim, modes, timing, the
    vertical-slash budgets (`vs_budgets(args)` parses them) and --no-flex."""
    parser.add_argument("--lengths", type=int, nargs="+", default=list(lengths))
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--modes", nargs="+", default=["random", "structured"])
    parser.add_argument("--rep-ms", type=float, default=1000)
    parser.add_argument("--vs-budgets", nargs="*", default=[f"{a},{b}" for a, b in vs_budgets],
                        help="vertical-slash budgets as NV,NS (none: skip vertical-slash)")
    parser.add_argument("--no-flex", action="store_true", help="skip block-sparse and A-shape")


def vs_budgets(args) -> list[tuple[int, int]]:
    """The (NV, NS) pairs of --vs-budgets (`add_shape_arguments`)."""
    return [tuple(int(x) for x in b.split(",")) for b in args.vs_budgets]


def median_ms(fn, warmup_ms: float = 200, rep_ms: float = 1000) -> float:
    """Median time of fn() in ms with CUDA events (triton.testing.do_bench)."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))


def sdpa_dense(q, k, v, backend):
    """Dense causal SDPA with one backend; K/V are repeated outside the timed region when the
    backend has no native GQA, so the baseline is the backend's best."""
    from torch.nn.attention import sdpa_kernel

    def run():
        with sdpa_kernel(backend):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

    return run


def print_table(rows: list[dict], cols: list[str]) -> None:
    """Rows as a `|`-separated table of `cols` (floats to 3 decimals, missing cells empty)."""
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(f"{r[c]:.3f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols))


def print_row(row: dict) -> None:
    """One result row as key=value pairs, as it is measured."""
    print(" | ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)


def write_json(path: str, payload: dict) -> None:
    with open(path, "w") as f:
        json.dump(payload, f, indent=1)
    print(f"wrote {path}")


def llama3_8b(num_layers: int = 32, seed: int = 0, name_or_path: str = ""):
    """Random-weight Llama-3-8B shape (hidden 4096, 32/8 heads, MLP 14336, vocab 128256, RoPE base
    5e5), built directly on the GPU in bf16 (no fp32 CPU copy), SDPA attention, eval mode.
    `name_or_path` is what `minference_flex.compile` looks the shipped config up by."""
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=num_layers,
        num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0,
        max_position_embeddings=262144, tie_word_embeddings=False,
    )
    return _random_model(config, seed, name_or_path)


def qwen25_7b_1m(num_layers: int = 28, seed: int = 0, name_or_path: str = ""):
    """Random-weight Qwen2.5-7B-Instruct-1M shape (hidden 3584, 28/4 heads, MLP 18944, vocab
    152064, RoPE base 1e7), built on the GPU in bf16, SDPA attention, eval mode."""
    import transformers

    config = transformers.Qwen2Config(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=num_layers,
        num_attention_heads=28, num_key_value_heads=4, rope_theta=10000000.0,
        max_position_embeddings=1010000, tie_word_embeddings=False, use_sliding_window=False,
    )
    return _random_model(config, seed, name_or_path)


def _random_model(config, seed: int, name_or_path: str):
    """A causal LM of `config` with random weights, built directly on the GPU in bf16 (no fp32
    CPU copy), SDPA attention, eval mode; `name_or_path` is what `minference_flex.compile`
    looks the shipped config up by."""
    import transformers

    config._name_or_path = name_or_path
    torch.manual_seed(seed)
    with torch.device("cuda"):
        model = transformers.AutoModelForCausalLM.from_config(
            config, dtype=torch.bfloat16, attn_implementation="sdpa"
        )
    return model.eval()
