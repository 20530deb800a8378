"""The model part of `python -m minference_flex demo`: a passkey prompt answered by the shipped
retrieval model with sparse pre-fill, against dense pre-fill of the same model.

Prints the answer, the time of sparse and dense pre-fill, the fraction of the causal tiles
the sparse kernels computed, and the relative error of the next-token logits against dense.
CPU: a few thousand tokens; GPU: longer.
"""

from __future__ import annotations

from collections import Counter

import torch

from minference_flex.patterns.config import load_pattern_config
from minference_flex.cli.demo import timed
from minference_flex.patch.hf import compile as compile_model, restore
from minference_flex.retrieval.model import answer, load_retrieval_model, searched_config_path, trained_length
from minference_flex.retrieval.tasks import TOKENIZER, exact_match, make_sample
from minference_flex.metrics.tile_count import count_tiles


def _prefill(model, ids: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Last-position logits of one warm pre-fill and its seconds."""
    with torch.no_grad():
        logits, seconds = timed(lambda: model(ids, logits_to_keep=1).logits[0, -1].float(), ids.device)
    return logits, seconds


def run_passkey_demo(
    seq_len: int | None = None, device: str | None = None, model_path: str | None = None, seed: int = 0
) -> dict:
    """Answer one held-out passkey sample densely and with sparse pre-fill; returns the figures."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    # default: the longest length the model was trained on (at most 2048 on CPU, where the
    # Triton kernels run in the interpreter)
    trained = trained_length(model_path) or 2048
    seq_len = seq_len or (trained if dev.type == "cuda" else min(trained, 2048))
    model = load_retrieval_model(model_path, dev)
    config = searched_config_path(model_path)
    sample = make_sample("passkey", seq_len, seed=10**9 + seed)
    ids = torch.tensor([sample.prompt], device=dev)
    layers, heads = model.config.num_hidden_layers, model.config.num_attention_heads
    kinds = Counter(p.kind for layer in load_pattern_config(config, layers, heads) for p in layer) if config else {}
    print(f"retrieval model, passkey prompt of {seq_len} tokens on {dev.type}; pattern config: "
          f"{config or 'default'} ({', '.join(f'{k} x{n}' for k, n in kinds.items()) or 'default pattern'})")

    dense_logits, dense_s = _prefill(model, ids)
    dense_answer = answer(model, sample)
    compile_model(model, config, min_sparse_len=min(seq_len, 1024))
    try:
        sparse_logits, sparse_s = _prefill(model, ids)
        with count_tiles() as tiles:
            sparse_answer = answer(model, sample)
    finally:
        restore(model)
    err = ((sparse_logits - dense_logits).norm() / dense_logits.norm()).item()
    row = {
        "seq_len": seq_len,
        "expected": TOKENIZER.decode(sample.answer),
        "dense_answer": TOKENIZER.decode(dense_answer),
        "sparse_answer": TOKENIZER.decode(sparse_answer),
        "sparse_correct": exact_match(sparse_answer, sample.answer),
        "dense_correct": exact_match(dense_answer, sample.answer),
        "dense_prefill_s": dense_s,
        "sparse_prefill_s": sparse_s,
        "logits_rel_error": err,
        "tile_fraction": tiles.fraction,
    }
    print(f"  pass key {row['expected']}: sparse pre-fill answers {row['sparse_answer']} "
          f"({'right' if row['sparse_correct'] else 'WRONG'}), dense answers {row['dense_answer']}")
    print(f"  pre-fill: sparse {sparse_s * 1e3:.1f} ms, dense {dense_s * 1e3:.1f} ms; "
          f"next-token logits rel. error vs dense {err:.2e}")
    print(f"  sparse pre-fill computed {tiles.fraction:.0%} of the causal 64x64 tiles"
          + (": at this length the config's budgets reach every tile" if tiles.fraction > 0.99 else ""))
    return row
