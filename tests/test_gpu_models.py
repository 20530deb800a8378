"""minference_flex.compile on a tiny random Llama on CUDA in bf16 (run: pytest -m gpu)."""

from __future__ import annotations

import pytest
import torch
import transformers

import minference_flex as mf

pytestmark = pytest.mark.gpu

MIXED = [
    {"0": ["vertical_and_slash", 30, 100, 0], "1": ["vertical_and_slash", 60, 120, 0],
     "2": ["stream_llm", 4, 64, 0], "3": ["block_sparse", 0, 0, 0]}
    for _ in range(2)
]


def _model():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=128, hidden_size=512, intermediate_size=1024, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16384,
    )
    return transformers.AutoModelForCausalLM.from_config(config).to("cuda", torch.bfloat16).eval()


def test_full_budgets_match_dense_and_mixed_patterns_run_cuda():
    model = _model()
    ids = torch.randint(1, 128, (1, 4099), device="cuda")
    with torch.no_grad():
        dense = model(ids).logits.float()
        full = [{str(h): ["vertical_and_slash", 10**6, 10**6, 0] for h in range(4)}] * 2
        mf.compile(model, full, min_sparse_len=1024, dense_fallback=False)
        got = model(ids).logits.float()
        assert (got - dense).abs().max() < 0.05 * dense.abs().max()
        mf.compile(model, MIXED, min_sparse_len=1024)
        sparse = model(ids).logits.float()
        assert torch.isfinite(sparse).all() and (sparse - dense).abs().max() > 0
        compiled = torch.compile(model)
        torch.testing.assert_close(compiled(ids, use_cache=False).logits.float(), sparse, rtol=3e-2, atol=3e-2)
    out = model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape == (1, 4103)
