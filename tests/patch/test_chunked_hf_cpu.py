"""Chunked pre-fill through a patched Hugging Face model (CPU, fp32, tiny random models): every
chunk long enough runs the sparse patterns over the KV cache."""

from __future__ import annotations

import warnings

import pytest
import torch
import transformers
from transformers import DynamicCache

import minference_flex as mf
from minference_flex.patch import hf
from tests.models import COMMON, LAYERS, MIXED, tiny_model, uniform
from minference_flex.patch.hf import cache_keyword

CONFIGS = {
    "llama": transformers.LlamaConfig(**COMMON, rope_theta=500000.0),
    "qwen2": transformers.Qwen2Config(**COMMON),
}
OPTIONS = dict(min_sparse_len=256, min_chunk_len=64)


def _model(name):
    return tiny_model(CONFIGS[name])




@pytest.fixture
def sparse_calls(monkeypatch):
    """(q_len, kv_len) of every call that went to the sparse patterns."""
    calls = []
    real = hf.sparse_prefill

    def spy(q, k, v, *args, **kwargs):
        calls.append((q.shape[2], k.shape[2]))
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(hf, "sparse_prefill", spy)
    return calls


def _chunked_logits(model, ids, chunk, cache=None):
    cache = DynamicCache(config=model.config) if cache is None else cache
    logits = []
    with torch.no_grad():
        for a in range(0, ids.shape[1], chunk):
            logits.append(model(ids[:, a:a + chunk], **{cache_keyword(model): cache}, use_cache=True).logits)
    return torch.cat(logits, dim=1), cache


@pytest.mark.parametrize("name", list(CONFIGS))
def test_chunked_loop_with_full_budgets_equals_dense_and_runs_sparse(name, sparse_calls):
    model = _model(name)
    ids = torch.randint(1, 128, (1, 600))
    with torch.no_grad():
        dense = model(ids).logits
    mf.compile(model, uniform("vertical_and_slash", 10**6, 10**6), dense_fallback=False, **OPTIONS)
    chunked, _ = _chunked_logits(model, ids, 192)
    torch.testing.assert_close(chunked, dense, rtol=1e-4, atol=1e-4)
    # chunks from kv_len 256 on went sparse, each layer once: (192, 384), (192, 576), (24, 600) is short
    assert sorted(set(sparse_calls)) == [(192, 384), (192, 576)]
    assert len(sparse_calls) == 2 * LAYERS


def test_chunked_loop_with_small_budgets_differs_from_dense(sparse_calls):
    model = _model("llama")
    ids = torch.randint(1, 128, (1, 700))
    with torch.no_grad():
        dense = model(ids).logits
    mf.compile(model, MIXED, min_sparse_len=300, min_chunk_len=64)
    chunked, _ = _chunked_logits(model, ids, 256)
    assert torch.isfinite(chunked).all()
    assert (chunked[:, 512:] - dense[:, 512:]).abs().max() > 1e-3, "the last chunk did not go sparse"
    torch.testing.assert_close(chunked[:, :256], dense[:, :256], rtol=1e-4, atol=1e-4)  # kv_len 256 < 300: dense
    assert sorted(set(sparse_calls)) == [(188, 700), (256, 512)]


def test_generate_with_prefill_chunks_equals_dense_with_full_budgets(sparse_calls):
    model = _model("llama")
    ids = torch.randint(1, 128, (1, 600))
    with torch.no_grad():
        want = model.generate(ids, max_new_tokens=6, do_sample=False)
        mf.compile(model, uniform("vertical_and_slash", 10**6, 10**6), dense_fallback=False, **OPTIONS)
        got = model.generate(ids, max_new_tokens=6, do_sample=False, prefill_chunk_size=200)
    assert torch.equal(got, want)
    assert (200, 400) in sparse_calls and (200, 600) in sparse_calls


@pytest.mark.slow
def test_second_prompt_on_a_cached_context(sparse_calls):
    model = _model("llama")
    document, question = torch.randint(1, 128, (1, 500)), torch.randint(1, 128, (1, 200))
    with torch.no_grad():
        dense = model(torch.cat([document, question], 1)).logits[:, 500:]
    mf.compile(model, uniform("block_sparse", 0, 0), **OPTIONS)
    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        model(document, **{cache_keyword(model): cache}, use_cache=True)
        mf.compile(model, uniform("vertical_and_slash", 10**6, 10**6), dense_fallback=False, **OPTIONS)
        second = model(question, **{cache_keyword(model): cache}, use_cache=True).logits
    assert (200, 700) in sparse_calls
    # the document went through block-sparse (not dense), the question through full budgets
    assert torch.isfinite(second).all()
    assert second.shape == dense.shape
    with torch.no_grad():
        mf.restore(model)
        mf.compile(model, uniform("vertical_and_slash", 10**6, 10**6), dense_fallback=False, **OPTIONS)
        cache = DynamicCache(config=model.config)
        model(document, **{cache_keyword(model): cache}, use_cache=True)
        exact = model(question, **{cache_keyword(model): cache}, use_cache=True).logits
    torch.testing.assert_close(exact, dense, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_left_padded_batch_in_chunks_runs_each_row_alone(sparse_calls):
    model = _model("llama")
    long, short = torch.randint(1, 128, (1, 600)), torch.randint(1, 128, (1, 450))
    with torch.no_grad():
        want_long = model(long).logits[:, -1]
        want_short = model(short).logits[:, -1]
    ids = torch.cat([long, torch.cat([torch.zeros(1, 150, dtype=torch.long), short], 1)])
    mask = torch.ones_like(ids)
    mask[1, :150] = 0
    mf.compile(model, uniform("vertical_and_slash", 10**6, 10**6), dense_fallback=False, **OPTIONS)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        for a in range(0, 600, 200):
            out = model(ids[:, a:a + 200], attention_mask=mask[:, :a + 200], **{cache_keyword(model): cache}, use_cache=True)
    torch.testing.assert_close(out.logits[0, -1], want_long[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.logits[1, -1], want_short[0], rtol=1e-4, atol=1e-4)
    # row 1 holds 250 real keys at the second chunk (dense) and 450 at the third (sparse)
    assert (200, 600) in sparse_calls and (200, 450) in sparse_calls


def test_min_chunk_len_is_validated():
    with pytest.raises(ValueError, match="min_chunk_len"):
        mf.compile(_model("llama"), uniform("block_sparse", 0, 0), min_chunk_len=0)


def test_cache_keyword_is_the_one_the_installed_transformers_takes_without_warning():
    """A patched (and a torch.compile-wrapped) model's forward and generate take the cache by
    `cache_keyword` with no deprecation warning, in every transformers 5.x."""
    model = mf.compile(_model("llama"), uniform("vertical_and_slash", 30, 100), **OPTIONS)
    ids = torch.randint(1, 128, (1, 300))
    assert cache_keyword(torch.compile(model)) == cache_keyword(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        with torch.no_grad():
            model(ids, **{cache_keyword(model): DynamicCache(config=model.config)}, use_cache=True)
            model.generate(ids, max_new_tokens=2, do_sample=False, prefill_chunk_size=128,
                           **{cache_keyword(model): DynamicCache(config=model.config)})
