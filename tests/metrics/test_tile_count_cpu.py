"""tile_count: the 64 x 64 tiles each pattern computes, against counts taken from the
reference masks (CPU; Triton interpreted, FlexAttention by Inductor's CPU template)."""

from __future__ import annotations

import math
import random

import pytest
import torch
import transformers

import minference_flex as mf
from custom_ops.vertical_slash import fraction_bound
from custom_ops.vertical_slash.index import dense_tiles
from minference_flex.patterns import events, get_pattern, registered
from minference_flex.patterns.events import AttentionCall
from minference_flex.ops import reference
from minference_flex.metrics import tile_count
from minference_flex.patterns.config import A_SHAPE, BLOCK_SPARSE, VERTICAL_SLASH, HeadPattern
from minference_flex.patterns.prefill import LayerPlan, sparse_prefill
from minference_flex.metrics.tile_count import TILE, causal_tiles, count_tiles

from tests.helpers import random_qkv
from tests.models import tiny_llama_config  # noqa: E402


def _tiles_touched(mask: torch.Tensor) -> torch.Tensor:
    """[..., Mq, Mk] bool: the 64 x 64 tiles (query rows from row 0, absolute keys) of a
    [..., Sq, Sk] mask holding an allowed pair."""
    q_len, kv_len = mask.shape[-2:]
    padded = torch.nn.functional.pad(mask, (0, -kv_len % TILE, 0, -q_len % TILE))
    return padded.unflatten(-1, (-1, TILE)).unflatten(-3, (-1, TILE)).any(-1).any(-2)


def _a_shape_expected(q_len: int, kv_len: int, init: int, local: int, block: int = 128) -> int:
    """Causal 64-tiles of one A-shape head inside a 128 x 128 block of absolute positions (rows
    from the multiple of 128 at or before the first query) where the reference mask allows
    some pair, padding rows and keys included, as FlexAttention's grid has them."""
    first = kv_len - q_len
    start, end = first - first % block, math.ceil(kv_len / block) * block
    allowed = reference.a_shape_mask(end, init, local, q_len=end - start)
    live = allowed.unflatten(-1, (-1, block)).unflatten(0, (-1, block)).any(-1).any(1)
    total = 0
    for m in range(math.ceil(q_len / TILE)):
        rows = (first + m * TILE, min(first + (m + 1) * TILE, kv_len) - 1)
        row_blocks = {(p - start) // block for p in rows}
        total += sum(any(live[r, n * TILE // block] for r in row_blocks) for n in range(rows[1] // TILE + 1))
    return total


def test_causal_tiles_count_the_tiles_of_the_causal_mask():
    for _ in range(20):
        kv_len = random.randrange(1, 700)
        q_len = random.choice([kv_len, random.randrange(1, kv_len + 1)])
        want = _tiles_touched(reference.causal_mask(kv_len, q_len=q_len)).sum().item()
        assert causal_tiles(q_len, kv_len) == want, (q_len, kv_len)


@pytest.mark.parametrize("chunked", [False, True])
def test_block_sparse_and_a_shape_heads_record_the_tiles_of_their_masks(monkeypatch, chunked):
    topk = random.randrange(1, 4)
    monkeypatch.setattr(get_pattern(BLOCK_SPARSE), "topk", topk)  # sparse at these lengths
    kv_len = random.randrange(400, 700)
    q_len = random.randrange(200, kv_len) if chunked else kv_len
    q, k, v = random_qkv(1, 4, 2, kv_len, 16)
    q = q[:, :, kv_len - q_len:]
    # sink < 64 and local < 128 keep an A-shape head sparse at >= 400 keys (a row of 7+ tiles
    # reads at most its first tile and the last 4)
    budgets = [(random.randrange(0, 64), random.randrange(1, 128)) for _ in range(2)]
    plan = LayerPlan.from_patterns([HeadPattern(BLOCK_SPARSE, 0, 0), HeadPattern(A_SHAPE, *budgets[0]),
                                    HeadPattern(BLOCK_SPARSE, 0, 0), HeadPattern(A_SHAPE, *budgets[1])])
    with count_tiles() as tiles:
        sparse_prefill(q, k, v, plan, 0.25)
    causal = causal_tiles(q_len, kv_len)
    block_sparse = _tiles_touched(reference.block_sparse_mask(q, k, topk)[:, [0, 2]]).sum().item()
    assert tiles.by_kind[BLOCK_SPARSE] == [block_sparse, 2 * causal]
    a_shape = sum(_a_shape_expected(q_len, kv_len, *b) for b in budgets)
    assert tiles.by_kind[A_SHAPE] == [a_shape, 2 * causal]
    assert block_sparse < 2 * causal and a_shape < 2 * causal, "sparse cases"
    assert tiles.fraction == (block_sparse + a_shape) / (4 * causal)


def test_a_shape_count_holds_with_the_compact_index_lists_of_cuda(monkeypatch):
    """On CUDA a BlockMask's index lists are only as wide as a row's most blocks (on CPU they
    span the grid); the count must not depend on that width."""
    from minference_flex.ops import flex

    kv_len = random.randrange(2000, 3000)
    q_len = random.choice([kv_len, random.randrange(300, kv_len)])
    q, k, _ = random_qkv(1, 2, 1, kv_len, 16)
    q = q[:, :, kv_len - q_len:]
    budgets = ((random.randrange(0, 64), random.randrange(0, 64)), (random.randrange(1, 300), random.randrange(1, 300)))
    counts = []
    for compact in (False, True):
        if compact:
            monkeypatch.setattr(flex, "_pad_width", lambda indices, width: indices)
        flex._cached_a_shape_block_mask.cache_clear()
        mask, _ = flex.a_shape_mask_for(q, k, *budgets)
        assert (mask.kv_indices.shape[-1] < math.ceil(kv_len / 128)) == compact, "the layout under test"
        tiles = tile_count.TileCount()
        tiles.record(AttentionCall(A_SHAPE, q, k, (0, 1), budgets=budgets))
        counts.append(tiles.by_kind[A_SHAPE])
    flex._cached_a_shape_block_mask.cache_clear()
    assert counts[0] == counts[1]
    assert counts[0][0] == sum(_a_shape_expected(q_len, kv_len, i, w) for i, w in zip(*budgets))


def test_vertical_slash_records_its_index_or_all_tiles_where_it_falls_back():
    kv_len = random.randrange(700, 1000)
    q_len = random.choice([kv_len, random.randrange(500, kv_len)])
    q, k, v = random_qkv(1, 4, 2, kv_len, 16)
    q = q[:, :, kv_len - q_len:]
    causal = causal_tiles(q_len, kv_len)
    full = LayerPlan.from_patterns([HeadPattern(VERTICAL_SLASH, 10**6, 10**6)] * 4)
    with count_tiles() as tiles:
        sparse_prefill(q, k, v, full, 0.25)
    assert tiles.by_kind == {VERTICAL_SLASH: [4 * causal, 4 * causal]}, "full budgets run dense"

    # (30, 100) keeps exactly keys 0..29 and offsets 0..99 (the estimator's forced sets)
    plan = LayerPlan.from_patterns([HeadPattern(VERTICAL_SLASH, 30, 100)] * 2 + [HeadPattern(A_SHAPE, 4, 64)] * 2)
    with count_tiles() as tiles:
        sparse_prefill(q, k, v, plan, 0.25, dense_fallback=False)
    computed, total = tiles.by_kind[VERTICAL_SLASH]
    assert total == 2 * causal
    keys = reference.vertical_slash_mask(torch.arange(30).expand(1, 2, 30), torch.arange(100).expand(1, 2, 100),
                                         kv_len, q_len=q_len)
    # the kernel reads every key a query tile's rows attend, at most 64 per tile it computes
    per_tile = torch.nn.functional.pad(keys, (0, 0, 0, -q_len % TILE)).unflatten(2, (-1, TILE)).any(3).sum(-1)
    at_least = ((per_tile + TILE - 1) // TILE).sum().item()
    nblocks = math.ceil(q_len / TILE)
    at_most = 2 * fraction_bound(30, 100, nblocks, TILE, kv_len - q_len) * dense_tiles(nblocks, kv_len - q_len, TILE)
    assert at_least <= computed <= at_most + 1e-6 and computed < total


def test_nothing_is_recorded_outside_the_context_or_while_compiling(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("an event was built or counted with nobody listening")

    monkeypatch.setattr(events, "AttentionCall", fail)
    for name in registered():
        monkeypatch.setattr(get_pattern(name), "tiles", fail)
    q, k, v = random_qkv(1, 2, 1, 256, 16)
    plan = LayerPlan.from_patterns([HeadPattern(VERTICAL_SLASH, 30, 100), HeadPattern(BLOCK_SPARSE, 0, 0)])
    sparse_prefill(q, k, v, plan, 0.25)
    assert not events.listening()
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    with count_tiles() as tiles:
        assert not events.listening()
        sparse_prefill(q, k, v, plan, 0.25)
    assert tiles.by_kind == {} and tiles.fraction is None


def test_nested_contexts_record_into_the_innermost_only():
    q, k, v = random_qkv(1, 2, 1, 256, 16)
    plan = LayerPlan.from_patterns([HeadPattern(VERTICAL_SLASH, 30, 100), HeadPattern(A_SHAPE, 4, 64)])
    with count_tiles() as outer:
        sparse_prefill(q, k, v, plan, 0.25)
        with count_tiles() as inner:
            sparse_prefill(q, k, v, plan, 0.25)
        first = {kind: list(counts) for kind, counts in outer.by_kind.items()}
        sparse_prefill(q, k, v, plan, 0.25)
    assert inner.by_kind == first and set(first) == {VERTICAL_SLASH, A_SHAPE}
    assert outer.by_kind == {kind: [2 * c, 2 * d] for kind, (c, d) in first.items()}


def test_a_patched_model_records_every_layer_of_its_prefill():
    """Layer 0: vertical-slash with full budgets (the op falls back to dense); layer 1:
    block-sparse (top 100 >= the 8 tiles of 512 tokens: all of them); layer 2: two A-shape
    and two block-sparse heads."""
    config = tiny_llama_config(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                               max_position_embeddings=2048)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    init, local = random.randrange(0, 100), random.randrange(1, 200)
    patterns = [
        [HeadPattern(VERTICAL_SLASH, 10**6, 10**6)] * 4,
        [HeadPattern(BLOCK_SPARSE, 0, 0)] * 4,
        [HeadPattern(A_SHAPE, init, local)] * 2 + [HeadPattern(BLOCK_SPARSE, 0, 0)] * 2,
    ]
    mf.compile(model, patterns, min_sparse_len=256)
    length = 512
    with torch.no_grad(), count_tiles() as tiles:
        model(torch.randint(0, 64, (1, length)), logits_to_keep=1)
    causal = causal_tiles(length, length)
    a_shape = 2 * _a_shape_expected(length, length, init, local)
    assert tiles.by_kind == {VERTICAL_SLASH: [4 * causal] * 2, BLOCK_SPARSE: [6 * causal] * 2,
                             A_SHAPE: [a_shape, 2 * causal]}
    assert tiles.fraction == (10 * causal + a_shape) / (12 * causal)
    # per layer, as a model of full-attention and other layers needs them counted apart
    assert tiles.by_layer == {0: [4 * causal] * 2, 1: [4 * causal] * 2, 2: [2 * causal + a_shape, 4 * causal]}
    assert tiles.fraction_of_layers([2]) == (2 * causal + a_shape) / (4 * causal)
    assert tiles.fraction_of_layers([0, 1]) == 1.0 and tiles.fraction_of_layers([7]) is None
    # decode steps run dense: every causal tile of their one-row rectangles
    with torch.no_grad(), count_tiles() as tiles:
        model.generate(torch.randint(0, 64, (1, 300)), min_new_tokens=3, max_new_tokens=3, do_sample=False)
    assert tiles.by_kind[tile_count.DENSE] == [12 * causal_tiles(1, 301) + 12 * causal_tiles(1, 302)] * 2
    assert set(tiles.by_layer) == {0, 1, 2}
    mf.restore(model)


@pytest.mark.slow
def test_a_compiled_model_records_nothing_and_does_not_recompile():
    config = tiny_llama_config(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               max_position_embeddings=2048)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    mf.compile(model, [[HeadPattern(VERTICAL_SLASH, 30, 100)] * 4] * 2, min_sparse_len=256)
    compiled = torch.compile(model, fullgraph=True)
    ids = torch.randint(0, 64, (1, random.randrange(300, 400)))
    with torch.no_grad():
        with count_tiles() as first:
            want = compiled(ids, use_cache=False).logits
        # torch's own config.patch: monkeypatch's undo deletes a config entry (see test_accelerate_cpu)
        with torch._dynamo.config.patch(error_on_recompile=True):
            with count_tiles() as second:
                got = compiled(ids, use_cache=False).logits
            torch.testing.assert_close(compiled(ids, use_cache=False).logits, got)
    torch.testing.assert_close(got, want)
    assert first.by_kind == second.by_kind == {}
