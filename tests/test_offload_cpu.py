"""The host-memory release hooks for an offloaded KV cache."""

from __future__ import annotations

import pytest
import torch
import transformers

from minference_flex import offload


def test_release_hooks_run_after_every_decoder_layer_and_come_off(monkeypatch):
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=64, num_hidden_layers=3,
                                      num_attention_heads=2, num_key_value_heads=1)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    calls = []
    monkeypatch.setattr(offload, "empty_host_cache", lambda: calls.append(1))
    hooks = offload.release_host_cache_after_each_layer(model)
    with torch.no_grad():
        model(torch.randint(0, 64, (1, 10)))
    assert len(calls) == 1 + 3  # once up front, then after each layer
    hooks.remove()
    with torch.no_grad():
        model(torch.randint(0, 64, (1, 10)))
    assert len(calls) == 4


def test_a_model_without_decoder_layers_is_named():
    with pytest.raises(ValueError, match="no decoder layers"):
        offload.release_host_cache_after_each_layer(torch.nn.Linear(2, 2))


def test_empty_host_cache_runs_without_a_gpu():
    offload.empty_host_cache()
