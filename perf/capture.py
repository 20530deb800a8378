"""Run a model once, densely, and hand each layer's q and k to a callback (for measurements)."""

from __future__ import annotations

from typing import Callable

import torch

PROBE = "minference_flex_probe"


def run_with_probe(model, ids: torch.Tensor, on_layer: Callable[[int, torch.Tensor, torch.Tensor, float], None]) -> None:
    """One dense forward of `ids` [1, S]; on_layer(layer_idx, q [B, H, S, D], k [B, Hkv, S, D], scale)
    is called inside every attention layer. The model's attention implementation is restored."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    from minference_flex.hf import _padding_only_mask

    def probe(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        scale = query.shape[-1] ** -0.5 if scaling is None else scaling
        on_layer(module.layer_idx, query, key, scale)
        out = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, is_causal=True, scale=scale, enable_gqa=query.shape[1] != key.shape[1]
        )
        return out.transpose(1, 2).contiguous(), None

    AttentionInterface.register(PROBE, probe)
    AttentionMaskInterface.register(PROBE, _padding_only_mask)
    previous = model.config._attn_implementation
    try:
        model.set_attn_implementation(PROBE)
        with torch.no_grad():
            model(ids, logits_to_keep=1, use_cache=False)
    finally:
        model.set_attn_implementation(previous)
