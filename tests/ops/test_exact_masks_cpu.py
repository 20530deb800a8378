"""Exact masks (minference_flex.ops.exact_masks): equal to the float64 references' masks, and the
patched model's masked path equal to its kernels (CPU: FlexAttention compiled, the
vertical-slash kernel in Triton's interpreter)."""

from __future__ import annotations

import random

import pytest
import torch

import minference_flex as mf
from minference_flex.ops import exact_masks
from minference_flex.ops import reference
from minference_flex.patterns.config import A_SHAPE, BLOCK_SPARSE, VERTICAL_SLASH, HeadPattern
from minference_flex.patterns.prefill import LayerPlan, sparse_prefill
from minference_flex.metrics.tile_count import count_tiles
from tests.helpers import random_qkv
from tests.models import tiny_llama_config, tiny_model  # noqa: E402


@pytest.mark.parametrize("q_len, kv_len, bs", [(333, 333, 64), (130, 517, 64), (257, 257, 32), (64, 1000, 128)])
def test_vertical_slash_mask_equals_the_reference(q_len, kv_len, bs):
    b, h = 2, 3
    v_idx = torch.randint(-5, kv_len + 20, (b, h, random.randrange(1, 40)))
    s_idx = torch.randint(-5, kv_len + 20, (b, h, random.randrange(3, 60)))
    s_idx[..., :3] = torch.tensor([0, 1, 0])  # duplicates and the main diagonal
    got = exact_masks.vertical_slash_mask(v_idx, s_idx, q_len, kv_len, bs)(0, q_len)
    want = reference.vertical_slash_mask(v_idx, s_idx, kv_len, bs, q_len)
    assert torch.equal(got, want)


MIXED = LayerPlan((VERTICAL_SLASH, A_SHAPE, BLOCK_SPARSE, VERTICAL_SLASH), (30, 16, 0, 64), (100, 128, 0, 200))


@pytest.mark.parametrize("q_len, kv_len", [(600, 600), (300, 700), (1100, 1100)])
def test_masked_prefill_equals_the_kernels_and_counts_the_same_tiles(q_len, kv_len):
    q, k, v = random_qkv(1, 4, 2, kv_len, 64)
    q = q[:, :, kv_len - q_len :].contiguous()
    with count_tiles() as kernel_tiles:
        want = sparse_prefill(q, k, v, MIXED, 64**-0.5)
    with count_tiles() as mask_tiles:
        got = sparse_prefill(q, k, v, MIXED, 64**-0.5, exact_masks=True)
    assert (got - want).abs().max() < 1e-4
    assert mask_tiles.by_kind == kernel_tiles.by_kind


def test_dense_fallback_is_the_ops_own_decision():
    q, k, v = random_qkv(1, 2, 1, 400, 64)
    plan = LayerPlan((VERTICAL_SLASH,) * 2, (1000, 1000), (6096, 6096))  # covers every tile: dense
    got = sparse_prefill(q, k, v, plan, 64**-0.5, exact_masks=True)
    dense = reference.masked_attention(q, k, v, reference.causal_mask(400))
    assert (got.double() - dense).abs().max() < 1e-5


def test_a_patched_model_with_exact_masks_matches_its_kernels():
    model = tiny_model(tiny_llama_config(hidden_size=64, intermediate_size=128), seed=random.randrange(2**31))
    patterns = [[HeadPattern(VERTICAL_SLASH, 30, 100), HeadPattern(A_SHAPE, 16, 128),
                 HeadPattern(BLOCK_SPARSE, 0, 0), HeadPattern(VERTICAL_SLASH, 64, 200)]] * 2
    ids = torch.randint(0, 128, (1, random.randrange(520, 700)))
    outs = []
    for exact in (False, True):
        mf.compile(model, patterns, min_sparse_len=256, exact_masks=exact)
        with torch.no_grad():
            outs.append(model(ids).logits)
        mf.restore(model)
    assert (outs[0] - outs[1]).abs().max() < 1e-3
    with pytest.raises(TypeError, match="exact_masks must be a bool"):
        mf.compile(model, patterns, exact_masks=1)
