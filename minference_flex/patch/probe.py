"""Run a Hugging Face model once, densely, and hand each attention layer's q and k to a callback.

The search scores candidate patterns this way, and the benchmarks measure recall and head
shapes with it. A temporary attention function (registered with transformers'
`AttentionInterface`) computes the exact dense output, so the forward is unchanged; the
callback sees one layer's q [B, H, S, D] and k [B, Hkv, S, D] at a time, never all layers. A
layer with a sliding window that cuts keys (Gemma 3's local layers) attends within its window.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch

from minference_flex.patch.hf import Options, _attend, _dense, _padding_only_mask

PROBE_NAME = "minference_flex_probe"

OnLayer = Callable[[int, torch.Tensor, torch.Tensor, float], None]


def dense_forward_with_probe(model: Any, ids: torch.Tensor, on_layer: OnLayer) -> None:
    """One dense pre-fill of `ids` [1, S] with no cache; `on_layer(layer_idx, q, k, scale)` runs
    inside every attention layer. No [S, vocab] logits are built; the model's attention
    implementation is restored afterwards, also when the callback raises."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    def probe(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        if attention_mask is not None or query.shape[2] != key.shape[2]:
            raise ValueError("the probe runs one unpadded prompt without a cache; got a padding mask or a cache")
        scale = query.shape[-1] ** -0.5 if scaling is None else scaling
        on_layer(module.layer_idx, query, key, scale)
        window = kwargs.get("sliding_window")
        if window is not None and key.shape[2] > window:  # the layer's own sliding window, as compile runs it
            return _attend(query, key, value, None, scale, Options(), window).transpose(1, 2).contiguous(), None
        return _dense(query, key, value, None, scale).transpose(1, 2).contiguous(), None

    AttentionInterface.register(PROBE_NAME, probe)
    AttentionMaskInterface.register(PROBE_NAME, _padding_only_mask)
    previous = model.config._attn_implementation
    try:
        model.set_attn_implementation(PROBE_NAME)
        with torch.no_grad():
            if "logits_to_keep" in inspect.signature(model.forward).parameters:
                model(input_ids=ids, use_cache=False, logits_to_keep=1)
            else:
                model.base_model(input_ids=ids, use_cache=False)
    finally:
        model.set_attn_implementation(previous)
