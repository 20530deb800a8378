"""`python -m minference_flex demo --model smollm2`: a question about a long real document,
answered by a real LLM with sparse and with dense pre-fill, side by side.

The document is a run of *Pride and Prejudice* with a fact hidden in it (a `text_tasks`
needle sample, held out); the model pre-fills it densely and with the pattern config
searched for it (or `--config`), and answers greedily. Prints each answer, the pre-fill time
of each (warm), and the fraction of the causal 64 x 64 tiles the sparse kernels computed.
"""

from __future__ import annotations

import torch

from minference_flex.patterns.config import load_pattern_config, shipped_config_path
from minference_flex.cli.demo import timed
from minference_flex.patch.hf import compile as compile_model, restore
from minference_flex.llms.pretrained import known_model, load_text_model
from minference_flex.llms.text_tasks import is_correct
from minference_flex.metrics.tile_count import count_tiles


def run_real_demo(model_spec: str, seq_len: int | None = None, device: str | None = None,
                  config: str | None = None, seed: int = 0) -> dict:
    """Run the demo on `model_spec` (see `pretrained.resolve_model`); returns its figures.

    seq_len: prompt tokens (default: the model's trained length on a GPU, 2048 on CPU, where
    the Triton kernels run in their interpreter)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, tasks = load_text_model(model_spec, dev)
    known = known_model(model)
    trained = known.trained_length if known else 8192
    seq_len = seq_len or (trained if dev.type == "cuda" else min(trained, 2048))
    config = config or shipped_config_path(model.config._name_or_path)
    layers, heads = model.config.num_hidden_layers, model.config.num_attention_heads
    patterns = load_pattern_config(config, layers, heads, model.config._name_or_path)
    sample = tasks.sample("needle", seq_len, 10**9 + seed)
    print(f"{model.config._name_or_path} on {dev.type}: {seq_len} tokens of Pride and Prejudice with one fact "
          f"hidden at {sample.depth:.0%} of it; pattern config: {config or 'default (every head VS 1000, 6096)'}")
    print(f"  question: {sample.question}")
    ids = torch.tensor([sample.prompt], device=dev)

    def prefill():
        with torch.no_grad():
            return model(ids, logits_to_keep=1).logits[0, -1].float()

    dense_logits, dense_s = timed(prefill, dev)
    dense_text = tasks.continuation(model, sample)
    # on a CPU, Triton runs in its interpreter: vertical-slash heads attend through their exact masks
    exact = dev.type == "cpu"
    if exact:
        print("  (CPU: vertical-slash heads attend through their exact masks, A-shape and block-sparse through "
              "FlexAttention compiled for the CPU; times are not the GPU kernels')")
    compile_model(model, patterns, min_sparse_len=min(seq_len, 1024), min_chunk_len=min(seq_len, 1024),
                  exact_masks=exact)
    try:
        sparse_logits, sparse_s = timed(prefill, dev)
        with count_tiles() as tiles:
            sparse_text = tasks.continuation(model, sample)
    finally:
        restore(model)
    row = {
        "model": model.config._name_or_path, "seq_len": seq_len, "expected": sample.answer,
        "dense_answer": dense_text.strip(), "sparse_answer": sparse_text.strip(),
        "dense_correct": is_correct(dense_text, sample), "sparse_correct": is_correct(sparse_text, sample),
        "dense_prefill_s": dense_s, "sparse_prefill_s": sparse_s, "tile_fraction": tiles.fraction,
        "logits_rel_error": ((sparse_logits - dense_logits).norm() / dense_logits.norm()).item(),
    }
    for name in ("dense", "sparse"):
        verdict = "right" if row[f"{name}_correct"] else "WRONG"
        print(f"  {name:6s} pre-fill {row[f'{name}_prefill_s'] * 1e3:8.1f} ms, answer {row[f'{name}_answer']!r} ({verdict})")
    print(f"  expected {sample.answer}; sparse pre-fill computed {tiles.fraction:.0%} of the causal 64x64 tiles; "
          f"next-token logits rel. error vs dense {row['logits_rel_error']:.2e}")
    return row
