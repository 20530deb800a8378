"""GPU checks of every op's gradients in bf16 against float64 autograd of masked attention,
bounded by dense bf16 SDPA's own backward error on the same mask; and a training step of a
patched tiny Llama. Run: pytest -m gpu tests/ops/test_gpu_backward.py."""

from __future__ import annotations

import pytest
import torch

import minference_flex as mf
from minference_flex.ops import reference
from tests.helpers import random_qkv, reference_grads
from tests.models import tiny_llama_config  # noqa: E402

pytestmark = pytest.mark.gpu

SHAPES = [  # batch, heads, kv_heads, seq_len, head_dim
    (1, 4, 1, 1000, 128),
    (2, 4, 2, 1537, 64),
    (1, 2, 2, 2048, 128),
]


def _leaves(shape, dtype=torch.bfloat16):
    b, h, hk, s, d = shape
    return [t.requires_grad_() for t in random_qkv(b, h, hk, s, d, dtype, "cuda")]


def _sdpa_grads(q, k, v, mask, grad_out):
    """bf16 SDPA's backward with the boolean mask (the baseline error)."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    full = mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    out = torch.nn.functional.scaled_dot_product_attention(*leaves, attn_mask=full, enable_gqa=q.shape[1] != k.shape[1])
    return torch.autograd.grad(out, leaves, grad_out)


def assert_grads_within_sdpa(out, q, k, v, mask, floor=1e-3):
    """The op's (dq, dk, dv) against float64 autograd: max error <= 2x bf16 SDPA's + floor."""
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    ref = reference_grads(q, k, v, mask, grad_out)
    base = _sdpa_grads(q, k, v, mask, grad_out)
    for name, got, want, sdpa in zip(("dq", "dk", "dv"), grads, ref, base):
        assert torch.isfinite(got).all(), f"{name} has NaN or inf"
        err = (got.double() - want).abs().max().item()
        bound = 2 * (sdpa.double() - want).abs().max().item() + floor
        assert err <= bound, f"{name}: max error {err:.3e} > bound {bound:.3e}"


@pytest.mark.parametrize("shape", SHAPES)
def test_dense_attention_grads_cuda(shape):
    q, k, v = _leaves(shape)
    assert_grads_within_sdpa(mf.dense_attention(q, k, v), q, k, v, reference.causal_mask(shape[3], "cuda"))


def test_dense_attention_grads_after_chunked_forward_cuda(monkeypatch):
    """The row chunks of cuDNN calls that long prompts take forward (forced by a small
    CHUNK_ROWS), then SDPA's backward: gradients of dense causal attention."""
    from custom_ops.dense_causal import op as dense_op

    q, k, v = _leaves((1, 8, 2, 3001, 128))
    monkeypatch.setattr(dense_op, "CHUNK_ROWS", 1000)
    assert dense_op._chunks_apply(q, k, v)
    assert_grads_within_sdpa(mf.dense_attention(q, k, v), q, k, v, reference.causal_mask(3001, "cuda"))


@pytest.mark.parametrize("shape", SHAPES)
def test_streaming_forward_grads_cuda(shape):
    """FlexAttention's backward through the A-shape mask with q-direction indices."""
    q, k, v = _leaves(shape)
    s = shape[3]
    assert_grads_within_sdpa(mf.streaming_forward(q, k, v, 7, 300), q, k, v, reference.a_shape_mask(s, 7, 300, "cuda"))


@pytest.mark.parametrize("shape", SHAPES)
def test_block_sparse_grads_cuda(shape):
    """Checked on the op's own tile selection (bf16 pooled scores may break ties otherwise)."""
    from tests.ops.test_gpu_kernels import _mask_of_selection

    q, k, v = _leaves(shape)
    out = mf.block_sparse_attention(q, k, v, topk=5)
    tiles, count = mf.select_block_sparse_tiles(q.detach(), k.detach(), 5)
    assert_grads_within_sdpa(out, q, k, v, _mask_of_selection(tiles, count, shape[3]))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("budget", [(57, 9), (9, 57), (300, 20)])  # both dedup sides, column chunks
def test_vertical_slash_grads_cuda(shape, budget):
    b, h, hk, s, d = shape
    q, k, v = _leaves(shape)
    v_idx = torch.randint(-3, s + 3, (b, h, budget[0]), device="cuda")
    s_idx = torch.randint(-3, s + 3, (b, h, budget[1]), device="cuda")
    s_idx[..., 0] = 0  # every row keeps its diagonal (SDPA gives NaN on rows without keys)
    out = mf.vertical_slash_sparse_attention(q, k, v, v_idx, s_idx, dense_fallback=False)
    assert_grads_within_sdpa(out, q, k, v, reference.vertical_slash_mask(v_idx, s_idx, s))


def test_vertical_slash_local_band_and_fallback_grads_cuda():
    """The estimator's shape (a local band of offsets 0..149, 200 columns: pieces masked by
    the column bitmap, clamped tiles), and the dense fallback's backward."""
    q, k, v = _leaves((1, 4, 2, 2048, 128))
    v_idx = torch.randint(0, 2048, (1, 4, 200), device="cuda")
    s_idx = torch.arange(150, device="cuda").expand(1, 4, -1)
    out = mf.vertical_slash_sparse_attention(q, k, v, v_idx, s_idx, dense_fallback=False)
    assert_grads_within_sdpa(out, q, k, v, reference.vertical_slash_mask(v_idx, s_idx, 2048))
    s_idx = torch.arange(0, 2048, 64, device="cuda").expand(1, 4, -1)
    out = mf.vertical_slash_sparse_attention(q, k, v, v_idx, s_idx)  # near dense: falls back
    assert_grads_within_sdpa(out, q, k, v, reference.causal_mask(2048, "cuda"))


@pytest.mark.parametrize("op", ["a_shape", "block_sparse", "vertical_slash"])
def test_backward_compiles_fullgraph_cuda(op):
    calls = {
        "a_shape": lambda q, k, v: mf.streaming_forward(q, k, v, 7, 300),
        "block_sparse": lambda q, k, v: mf.block_sparse_attention(q, k, v, 5),
        "vertical_slash": lambda q, k, v: mf.dynamic_vertical_slash_attention(q, k, v, 100, 200, dense_fallback=False),
    }

    def loss(q, k, v):
        return calls[op](q, k, v).float().square().sum()

    q, k, v = _leaves((1, 8, 2, 4099, 128))
    eager = torch.autograd.grad(loss(q, k, v), (q, k, v))
    compiled = torch.autograd.grad(torch.compile(loss, fullgraph=True)(q, k, v), (q, k, v))
    for a, b in zip(compiled, eager):
        assert (a.float() - b.float()).abs().max() <= 0.02 * b.float().abs().max()


def test_training_step_of_a_patched_model_cuda():
    """A tiny bf16 Llama with mixed patterns trains sparse: full budgets give the unpatched
    gradients (to bf16 level), small budgets finite ones that differ, and a compiled step the
    eager gradients."""
    import transformers

    torch.manual_seed(0)
    config = tiny_llama_config(hidden_size=512, intermediate_size=1024, max_position_embeddings=16384)
    model = transformers.AutoModelForCausalLM.from_config(config).to("cuda", torch.bfloat16).train()
    ids = torch.randint(1, 128, (1, 4099), device="cuda")

    def grads(m):
        model.zero_grad(set_to_none=True)
        m(ids, labels=ids, use_cache=False).loss.backward()
        return torch.cat([p.grad.float().flatten() for p in model.parameters()])

    dense = grads(model)
    full = [{"0": ["vertical_and_slash", 10**6, 10**6, 0], "1": ["stream_llm", 0, 10**6, 0],
             "2": ["block_sparse", 0, 0, 0], "3": ["vertical_and_slash", 10**6, 10**6, 0]}] * 2
    mf.compile(model, full, min_sparse_len=1024, dense_fallback=False)
    # block-sparse's top 100 of 65 tiles and the other full budgets cover every causal key
    assert (grads(model) - dense).norm() <= 0.05 * dense.norm()
    mixed = [{"0": ["vertical_and_slash", 30, 100, 0], "1": ["vertical_and_slash", 60, 120, 0],
              "2": ["stream_llm", 4, 64, 0], "3": ["block_sparse", 0, 0, 0]}] * 2
    mf.compile(model, mixed, min_sparse_len=1024)
    sparse = grads(model)
    assert torch.isfinite(sparse).all() and (sparse - dense).norm() > 0.05 * dense.norm()
    compiled = grads(torch.compile(model))
    assert (compiled - sparse).norm() <= 0.05 * sparse.norm()
    model.gradient_checkpointing_enable()
    assert (grads(model) - sparse).norm() <= 0.05 * sparse.norm()


@pytest.mark.parametrize("op", ["dense", "a_shape", "block_sparse", "vertical_slash"])
def test_grads_at_the_end_of_the_keys_cuda(op):
    """Queries at the end of the keys (a chunk of 1000 of 3001 positions, offset off a tile
    boundary). Block-sparse is checked on its own tile selection (bf16 pooled scores)."""
    from minference_flex.ops import flex

    sq, sk = 1000, 3001
    q = torch.randn(2, 8, sq, 128, device="cuda", dtype=torch.bfloat16).requires_grad_()
    k, v = (torch.randn(2, 2, sk, 128, device="cuda", dtype=torch.bfloat16).requires_grad_() for _ in range(2))
    if op == "dense":
        out, mask = mf.dense_attention(q, k, v), reference.causal_mask(sk, "cuda", q_len=sq)
    elif op == "a_shape":
        out, mask = mf.streaming_forward(q, k, v, 7, 300), reference.a_shape_mask(sk, 7, 300, "cuda", q_len=sq)
    elif op == "block_sparse":
        out = mf.block_sparse_attention(q, k, v, 5)
        tiles, count = mf.select_block_sparse_tiles(q.detach(), k.detach(), 5)
        mask = flex.block_mask_to_bool(flex.block_sparse_block_mask(tiles, count, sk, 64, q_len=sq), sq, sk)
    else:
        v_idx = torch.randint(0, sk, (2, 8, 100), device="cuda")
        s_idx = torch.cat([torch.arange(50, device="cuda").expand(2, 8, 50),
                           torch.randint(0, sk, (2, 8, 30), device="cuda")], -1)
        out = mf.vertical_slash_sparse_attention(q, k, v, v_idx, s_idx, dense_fallback=False)
        mask = reference.vertical_slash_mask(v_idx, s_idx, sk, 64, q_len=sq)
    assert_grads_within_sdpa(out, q, k, v, mask)
