"""minference_flex.compile on a tiny random Llama on CUDA in bf16 (run: pytest -m gpu)."""

from __future__ import annotations

import pytest
import torch
import transformers

import minference_flex as mf
from tests.models import tiny_llama_config  # noqa: E402
from tests.models import MIXED  # noqa: E402

pytestmark = pytest.mark.gpu



def _model():
    torch.manual_seed(0)
    config = tiny_llama_config(hidden_size=512, intermediate_size=1024, max_position_embeddings=16384)
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


def test_search_on_cuda_bf16_gives_a_config_that_compiles():
    model = _model()
    candidates = [mf.HeadPattern("vertical_and_slash", 30, 100), mf.HeadPattern("stream_llm", 4, 256),
                  mf.HeadPattern("block_sparse", 0, 0)]
    result = mf.search(model, length=8192, candidates=candidates, progress=False)
    again = mf.search(model, length=8192, candidates=candidates, progress=False)
    assert result.config == again.config
    assert all(0 <= r <= 1.0 + 1e-5 for layer in result.recall for r in layer)
    mf.compile(model, result.config, min_sparse_len=1024)
    ids = torch.randint(1, 128, (1, 8192), device="cuda")
    with torch.no_grad():
        assert torch.isfinite(model(ids, logits_to_keep=1).logits).all()


def test_retrieval_model_answers_with_sparse_prefill_on_cuda():
    """The shipped model with its searched config answers passkey and multikey at 32K: of 5
    fresh samples per task that it answers with dense attention, at least 4 with sparse."""
    from minference_flex.retrieval.model import answer, load_retrieval_model, searched_config_path, shipped_model_available
    from minference_flex.retrieval.tasks import exact_match
    from minference_flex.metrics.tile_count import count_tiles
    from tests.helpers import samples_the_model_answers

    if not shipped_model_available():
        pytest.skip("no trained retrieval model ships")
    model = load_retrieval_model(device="cuda")
    samples = {task: samples_the_model_answers(model, task, 32768, count=5) for task in ("passkey", "multikey")}
    mf.compile(model, searched_config_path(), min_sparse_len=1024)
    for task, chosen in samples.items():
        with count_tiles() as tiles:
            right = sum(exact_match(answer(model, s), s.answer) for s in chosen)
        assert right >= 4, f"{task}: {right} of 5 answered at 32K"
        assert tiles.fraction < 0.95, f"{task}: {tiles.fraction:.2f} of the causal tiles computed"


def test_long_dense_prefill_runs_the_chunked_op_cuda(monkeypatch):
    """A patched model's dense pre-fill (prompt below min_sparse_len) goes through
    `minference_flex::dense_causal_attention`; with a small CHUNK_ROWS (forced: 4 chunks) its
    logits match the unpatched SDPA model's."""
    from custom_ops.dense_causal import op as dense_op

    calls = []
    real = dense_op._cudnn_attend
    monkeypatch.setattr(dense_op, "_cudnn_attend", lambda *a: calls.append(a[3]) or real(*a))
    monkeypatch.setattr(dense_op, "CHUNK_ROWS", 1100)
    model = _model()
    ids = torch.randint(1, 128, (1, 4099), device="cuda")
    with torch.no_grad():
        dense = model(ids).logits.float()
        mf.compile(model, MIXED, min_sparse_len=8192)
        got = model(ids).logits.float()
    assert len(calls) == 2 * (2 * 4 - 1), "each layer runs 4 causal chunks and 3 rectangles"
    assert (got - dense).abs().max() < 0.05 * dense.abs().max()
