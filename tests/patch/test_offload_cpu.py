"""HostOffloadedCache: a chunked pre-fill over it gives the logits of a DynamicCache, with every
full-attention layer's K/V in host blocks between its turns."""

from __future__ import annotations

import pytest
import torch
import transformers

import minference_flex as mf
from minference_flex.patch.hf import cache_keyword
from minference_flex.patch import offload


def _model(sliding_window=None):
    torch.manual_seed(0)
    if sliding_window:
        config = transformers.Qwen2Config(
            vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, use_sliding_window=True, sliding_window=sliding_window, layer_types=[
                "full_attention", "sliding_attention", "full_attention"])
    else:
        config = transformers.LlamaConfig(
            vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def _chunked_logits(model, ids, cache, chunk):
    out = []
    with torch.no_grad():
        for a in range(0, ids.shape[1], chunk):
            out.append(model(ids[:, a:a + chunk], **{cache_keyword(model): cache}, use_cache=True).logits)
    return torch.cat(out, 1)


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 5 tokens (batch 2, 2 kv heads, head dim 16, fp32): chunks straddle blocks."""
    monkeypatch.setattr(offload, "BLOCK_BYTES", 5 * 2 * 2 * 16 * 4)


@pytest.mark.parametrize("patched", [False, True], ids=["transformers", "minference_flex"])
def test_chunked_prefill_over_the_host_cache_equals_a_dynamic_cache(small_blocks, patched):
    model = _model()
    if patched:
        mf.compile(model, min_sparse_len=16, min_chunk_len=4)
    ids = torch.randint(0, 97, (2, 43), generator=torch.Generator().manual_seed(1))
    expected = _chunked_logits(model, ids, transformers.DynamicCache(config=model.config), 11)
    cache = mf.HostOffloadedCache(model.config)
    got = _chunked_logits(model, ids, cache, 11)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert cache.get_seq_length() == 43
    for layer in cache.layers:
        assert not layer.resident, "every layer goes back to the host after its turn"
        assert layer.get_seq_length() == 43
        assert len(layer._host[0]) == len(layer._host[1]) == 9  # ceil(43 / 5) blocks, no more


def test_host_blocks_hold_exactly_the_cached_keys(small_blocks):
    model = _model()
    cache = mf.HostOffloadedCache(model.config)
    ids = torch.randint(0, 97, (2, 23), generator=torch.Generator().manual_seed(2))
    _chunked_logits(model, ids, cache, 7)
    reference = transformers.DynamicCache(config=model.config)
    _chunked_logits(model, ids, reference, 7)
    layer = cache.layers[1]
    layer.fetch()
    torch.testing.assert_close(layer.keys, reference.layers[1].keys, rtol=0, atol=0)
    torch.testing.assert_close(layer.values, reference.layers[1].values, rtol=0, atol=0)


def test_generate_with_chunked_prefill_over_the_host_cache(small_blocks):
    model = _model()
    mf.compile(model, min_sparse_len=16, min_chunk_len=4)
    ids = torch.randint(0, 97, (2, 37), generator=torch.Generator().manual_seed(3))
    kwargs = dict(max_new_tokens=6, do_sample=False, prefill_chunk_size=16)
    expected = model.generate(ids, **kwargs)
    got = model.generate(ids, **{cache_keyword(model): mf.HostOffloadedCache(model.config)}, **kwargs)
    assert torch.equal(got, expected)


def test_a_second_prompt_and_a_crop_on_the_host_cache(small_blocks):
    model = _model()
    ids = torch.randint(0, 97, (2, 30), generator=torch.Generator().manual_seed(4))
    cache, reference = mf.HostOffloadedCache(model.config), transformers.DynamicCache(config=model.config)
    _chunked_logits(model, ids[:, :20], cache, 20)
    _chunked_logits(model, ids[:, :20], reference, 20)
    cache.crop(-3)
    reference.crop(-3)
    assert cache.get_seq_length() == 17
    torch.testing.assert_close(_chunked_logits(model, ids[:, 17:], cache, 13),
                               _chunked_logits(model, ids[:, 17:], reference, 13), rtol=0, atol=0)


def test_sliding_window_layers_stay_on_the_device():
    model = _model(sliding_window=8)
    cache = mf.HostOffloadedCache(model.config)
    assert [type(layer).__name__ for layer in cache.layers] == [
        "HostBlockLayer", "DynamicSlidingWindowLayer", "HostBlockLayer"]
    ids = torch.randint(0, 97, (1, 25), generator=torch.Generator().manual_seed(5))
    expected = _chunked_logits(model, ids, transformers.DynamicCache(config=model.config), 8)
    torch.testing.assert_close(_chunked_logits(model, ids, cache, 8), expected, rtol=0, atol=0)
    assert not cache.layers[0].resident and cache.layers[1].keys is not None


def test_batch_reordering_and_a_missing_config_are_refused_with_the_fix():
    model = _model()
    cache = mf.HostOffloadedCache(model.config)
    _chunked_logits(model, torch.randint(0, 97, (2, 9)), cache, 9)
    with pytest.raises(NotImplementedError, match="greedy or sampled decoding"):
        cache.batch_repeat_interleave(2)
    with pytest.raises(NotImplementedError, match="DynamicCache"):
        cache.layers[0].batch_select_indices(torch.tensor([0]))
    with pytest.raises(ValueError, match=r"model's config \(model.config\)"):
        mf.HostOffloadedCache(None)
