"""Tiny random Hugging Face models and pattern configs the tests share (4 query / 2 KV heads,
2 layers unless a test asks otherwise)."""

from __future__ import annotations

import copy

import torch
import transformers

HEADS, KV_HEADS, LAYERS = 4, 2, 2
#: The shape every tiny test model shares unless a test overrides it.
COMMON = dict(
    vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=LAYERS,
    num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=4096,
)
#: One head of each pattern kind (two vertical-slash heads of different budgets), every layer.
MIXED = [
    {"0": ["vertical_and_slash", 30, 100, 0], "1": ["vertical_and_slash", 60, 120, 0],
     "2": ["stream_llm", 4, 64, 0], "3": ["block_sparse", 0, 0, 0]}
    for _ in range(LAYERS)
]


def tiny_llama_config(**overrides) -> transformers.LlamaConfig:
    """A small Llama config: COMMON with `overrides`."""
    return transformers.LlamaConfig(**{**COMMON, **overrides})


def tiny_model(config: transformers.PretrainedConfig, seed: int = 0) -> torch.nn.Module:
    """A causal LM of `config` with weights drawn from `seed`, in eval mode."""
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(copy.deepcopy(config)).eval()


def uniform(kind: str, a: int, b: int, heads: int = HEADS, layers: int = LAYERS) -> list[dict]:
    """A pattern config giving every head of every layer (kind, a, b)."""
    return [{str(h): [kind, a, b, 0] for h in range(heads)} for _ in range(layers)]
