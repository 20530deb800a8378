"""GPU checks of every kernel against float64 references (bf16/fp16). Run: pytest -m gpu."""

from __future__ import annotations

import pytest
import torch

import minference_flex as mf
from minference_flex.ops import reference
from tests.helpers import assert_close_to_reference, random_qkv

pytestmark = pytest.mark.gpu

SHAPES = [  # batch, heads, kv_heads, seq_len, head_dim
    (1, 4, 1, 1000, 128),
    (2, 4, 2, 1537, 64),
    (1, 2, 2, 2048, 128),
]
DTYPES = [torch.bfloat16, torch.float16]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_streaming_forward_cuda(shape, dtype):
    b, h, hk, s, d = shape
    q, k, v = random_qkv(b, h, hk, s, d, dtype, "cuda")
    out = mf.streaming_forward(q, k, v, 7, 300)
    assert_close_to_reference(out, q, k, v, reference.a_shape_mask(s, 7, 300, "cuda"))


def _mask_of_selection(tiles, count, seq_len, block=64):
    nblocks = -(-seq_len // block)
    keep = torch.zeros(*tiles.shape[:2], nblocks, nblocks + 1, dtype=torch.bool, device=tiles.device)
    valid = torch.arange(tiles.shape[-1], device=tiles.device) < count[..., None]
    keep.scatter_(-1, torch.where(valid, tiles.long(), nblocks), True)
    keep = keep[..., :nblocks] | torch.eye(nblocks, dtype=torch.bool, device=tiles.device)
    tile_of = torch.arange(seq_len, device=tiles.device) // block
    return keep[:, :, tile_of][:, :, :, tile_of] & reference.causal_mask(seq_len, tiles.device)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_block_sparse_cuda(shape, dtype):
    """Pooled scores are bf16/fp16 on CUDA, so near-ties may pick other tiles than the float64
    reference: the attention is checked on the op's own selection, the selection against the
    op's own pooled scores (exact top-k, ties allowed), and those scores against float64."""
    from minference_flex.ops.estimate import pooled_tile_scores
    from tests.ops.test_top_tiles_cpu import check_selection

    b, h, hk, s, d = shape
    q, k, v = random_qkv(b, h, hk, s, d, dtype, "cuda")
    out = mf.block_sparse_attention(q, k, v, topk=5)
    tiles, count = mf.select_block_sparse_tiles(q, k, 5)
    assert_close_to_reference(out, q, k, v, _mask_of_selection(tiles, count, s))
    scores = pooled_tile_scores(q, k, 64)
    check_selection(scores, tiles, count, 5)
    # the scores come from bf16/fp16-rounded pooled tiles: compare at that precision
    ref = reference.block_sparse_scores(q, k)
    causal = torch.isfinite(ref)
    eps = torch.finfo(dtype).eps
    bound = 8 * eps * ref[causal].abs().max().item()
    assert (scores.double()[causal] - ref[causal]).abs().max().item() <= bound


@pytest.mark.parametrize("dtype", DTYPES)
def test_block_sparse_key_split_cuda(monkeypatch, dtype):
    """The key-range passes that long sequences take (forced here by a small KEY_SPLIT_BYTES:
    2 to 3 passes), merged by log-sum-exp, against the reference on the op's own selection;
    once more inside a fullgraph compile."""
    from minference_flex.ops import flex

    for b, h, hk, s, d in SHAPES:
        q, k, v = random_qkv(b, h, hk, s, d, dtype, "cuda")
        monkeypatch.setattr(flex, "KEY_SPLIT_BYTES", 2 * s * d * k.element_size() // (2 + s % 2))
        assert flex.key_split_parts(k) > 1
        out = mf.block_sparse_attention(q, k, v, topk=5)
        tiles, count = mf.select_block_sparse_tiles(q, k, 5)
        assert_close_to_reference(out, q, k, v, _mask_of_selection(tiles, count, s))
    compiled = torch.compile(lambda q, k, v: mf.block_sparse_attention(q, k, v, topk=5), fullgraph=True)
    assert_close_to_reference(compiled(q, k, v), q, k, v, _mask_of_selection(tiles, count, s))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("budget", [(57, 9), (9, 57), (300, 20)])  # both dedup sides, column chunks
def test_vertical_slash_cuda(shape, dtype, budget):
    b, h, hk, s, d = shape
    q, k, v = random_qkv(b, h, hk, s, d, dtype, "cuda")
    v_idx = torch.randint(-3, s + 3, (b, h, budget[0]), device="cuda")
    s_idx = torch.randint(-3, s + 3, (b, h, budget[1]), device="cuda")
    out = mf.vertical_slash_sparse_attention(q, k, v, v_idx, s_idx, dense_fallback=False)
    mask = reference.vertical_slash_mask(v_idx, s_idx, s)
    assert_close_to_reference(out, q, k, v, mask)


# whole column chunks and column-masked pieces; plain band pieces; a local band (pieces near
# the diagonal, column-masked and clamped)
@pytest.mark.parametrize("budget", [(300, 20), (9, 57), (300, -150)])
@pytest.mark.parametrize("head_dim", [128, 96])  # TMA where D is a power of two, else pointers
def test_vertical_slash_tma_and_pointer_loads_cuda(budget, head_dim):
    """The whole-tile loops load by TMA by default; with it off, the same kernel loads through
    pointers. Both match the reference. A negative slash budget -n means offsets 0..n-1."""
    from custom_ops.vertical_slash import build_vertical_slash_index
    from custom_ops.vertical_slash.kernel import launch_vertical_slash

    b, h, hk, s = 2, 4, 2, 1537
    q, k, v = random_qkv(b, h, hk, s, head_dim, torch.bfloat16, "cuda")
    v_idx = torch.randint(0, s, (b, h, budget[0]), device="cuda")
    if budget[1] < 0:
        s_idx = torch.arange(-budget[1], device="cuda").expand(b, h, -1)
    else:
        s_idx = torch.randint(0, s, (b, h, budget[1]), device="cuda")
    index = build_vertical_slash_index(v_idx, s_idx, s, 64)
    mask = reference.vertical_slash_mask(v_idx, s_idx, s)
    for tma in (True, False):
        out = launch_vertical_slash(q, k, v, index, 64, head_dim**-0.5, col_tma=tma, piece_tma=tma)
        assert_close_to_reference(out, q, k, v, mask)


@pytest.mark.parametrize("dtype", DTYPES)
def test_vertical_slash_scores_cuda(dtype):
    """The fused estimator sums equal the PyTorch softmax + sums on the same scores."""
    from minference_flex.ops.estimate import _diagonal_sums, grouped_last_probs, last_query_sums

    q, k, _ = random_qkv(2, 8, 2, 3001, 128, dtype, "cuda")
    vertical, slash = last_query_sums(q, k, 64, 128**-0.5)
    probs = grouped_last_probs(q, k, 64, 128**-0.5)
    torch.testing.assert_close(vertical, probs.sum(-2), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(slash, _diagonal_sums(probs), rtol=1e-5, atol=1e-6)
    columns_only = last_query_sums(q, k, 64, 128**-0.5, columns=True, diagonals=False)
    diagonals_only = last_query_sums(q, k, 64, 128**-0.5, columns=False, diagonals=True)
    assert columns_only[1].shape[-1] == 0 and diagonals_only[0].shape[-1] == 0
    # each side alone is another compiled variant of the kernel (fp32 rounding may differ)
    torch.testing.assert_close(columns_only[0], probs.sum(-2), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(diagonals_only[1], _diagonal_sums(probs), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_top_tiles_cuda(dtype):
    """The radix top-k keeps the same score multiset as torch.topk, ascending, ties included."""
    from tests.ops.test_top_tiles_cpu import check_selection

    scores = (torch.randn(2, 3, 300, 300, device="cuda") * 4).round().div(4).to(dtype)
    from custom_ops.top_tiles import top_tiles

    for topk in (1, 37, 100, 1000):
        check_selection(scores, *top_tiles(scores, topk), topk)


@pytest.mark.parametrize("dtype", DTYPES)
def test_estimate_then_attend_compiles_fullgraph_cuda(dtype):
    q, k, v = random_qkv(1, 8, 2, 4099, 128, dtype, "cuda")

    def estimate_and_attend(q, k, v):
        v_idx, s_idx = mf.estimate_vertical_slash(q, k, 200, 300)
        out = mf.vertical_slash_sparse_attention(q, k, v, v_idx, s_idx, dense_fallback=False)
        return out, v_idx, s_idx

    out, v_idx, s_idx = torch.compile(estimate_and_attend, fullgraph=True)(q, k, v)
    mask = reference.vertical_slash_mask(v_idx, s_idx, 4099)
    assert_close_to_reference(out, q, k, v, mask)


def test_full_budgets_equal_dense_cuda():
    q, k, v = random_qkv(1, 4, 2, 3001, 128, torch.bfloat16, "cuda")
    dense = mf.dense_attention(q, k, v).float()
    ref = reference.masked_attention(q, k, v, reference.causal_mask(3001, "cuda"))
    tol = 2 * (dense.double() - ref).abs().max().item() + 1e-3
    for out in (
        mf.streaming_forward(q, k, v, 0, 3001),
        mf.block_sparse_attention(q, k, v, topk=10**6),
        mf.dynamic_vertical_slash_attention(q, k, v, 3001, 3001, dense_fallback=False),
    ):
        assert (out.double() - ref).abs().max().item() <= tol


def test_estimators_in_head_chunks_cuda(monkeypatch):
    """The chunked score buffers (used from 512K tokens on) give the same estimates on CUDA."""
    from minference_flex.ops import estimate

    q, k, _ = random_qkv(2, 8, 2, 3000, 128, torch.bfloat16, "cuda")
    whole = estimate.last_query_sums(q, k, 64, 128**-0.5)
    tiles, count = mf.select_block_sparse_tiles(q, k, 7)
    scores = estimate.pooled_tile_scores(q, k, 64).float()
    monkeypatch.setattr(estimate, "SCORE_BUFFER_BYTES", 1)
    # a matmul over fewer heads may round a bf16 score differently: compare at bf16 level
    for a, b in zip(whole, estimate.last_query_sums(q, k, 64, 128**-0.5)):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-6)
    tiles_c, count_c = mf.select_block_sparse_tiles(q, k, 7)
    total = scores.gather(-1, tiles.long().clamp(max=scores.shape[-1] - 1)).where(
        torch.arange(tiles.shape[-1], device="cuda") < count[..., None], 0).sum(-1)
    total_c = scores.gather(-1, tiles_c.long().clamp(max=scores.shape[-1] - 1)).where(
        torch.arange(tiles.shape[-1], device="cuda") < count_c[..., None], 0).sum(-1)
    torch.testing.assert_close(total_c, total, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_causal_chunks_cuda(monkeypatch, dtype):
    """The row chunks of cuDNN calls that long prompts take (forced here by a small
    CHUNK_ROWS: 3 to 6 chunks), on every test shape, once with q, k, v strided like HF's
    [B, S, H, D] layout, and once inside a fullgraph compile."""
    from custom_ops.dense_causal import op as dense_op

    for b, h, hk, s, d in SHAPES:
        q, k, v = random_qkv(b, h, hk, s, d, dtype, "cuda")
        monkeypatch.setattr(dense_op, "CHUNK_ROWS", s // 3 - 17)
        assert dense_op._chunks_apply(q, k, v), "cuDNN does not take these inputs"
        assert_close_to_reference(mf.dense_attention(q, k, v), q, k, v, reference.causal_mask(s, "cuda"))
        q2, k2, v2 = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
        assert_close_to_reference(mf.dense_attention(q2, k2, v2), q, k, v, reference.causal_mask(s, "cuda"))
    compiled = torch.compile(mf.dense_attention, fullgraph=True)
    assert_close_to_reference(compiled(q, k, v), q, k, v, reference.causal_mask(s, "cuda"))
