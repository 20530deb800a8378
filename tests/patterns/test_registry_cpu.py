"""The pattern interface: a pattern defined in one place (here, a test's own "local window"
pattern) runs through sparse_prefill beside the built-in ones, is counted by count_tiles, read
from config files, written as a search candidate and costed (CPU)."""

from __future__ import annotations

import random

import pytest
import torch

from minference_flex.metrics.recall import candidate_scores, pattern_cost
from minference_flex.metrics.tile_count import causal_tiles, count_tiles
from minference_flex.ops import reference
from minference_flex.ops.flex import a_shape_attend
from minference_flex.pattern_search.search import parse_candidate
from minference_flex.patterns import SparsePattern, get_pattern, register, registered, unregister
from minference_flex.patterns.config import A_SHAPE, BLOCK_SPARSE, VERTICAL_SLASH, HeadPattern, parse_pattern_config
from minference_flex.patterns.prefill import LayerPlan, sparse_prefill
from tests.helpers import random_qkv

LOCAL = "local_window"


class LocalWindow(SparsePattern):
    """Each query attends the `b` keys ending at its own position (a = 0): A-shape without sinks."""

    name = LOCAL
    label = "local"
    budget_names = ("unused", "window")
    aliases = ("lw",)
    spec_help = "lw:0,WINDOW"

    def check_budgets(self, a, b):
        return "local_window takes a = 0 and a window b >= 1" if a != 0 or b < 1 else None

    def attend(self, q, k, v, group):
        return a_shape_attend(q, k, v, (0,) * q.shape[1], group.b, group.scale), {}

    def tiles(self, call):
        return get_pattern(A_SHAPE).tiles(call)

    def cost(self, a, b, seq_len, block_size=64):
        return get_pattern(A_SHAPE).cost(0, b, seq_len, block_size)


@pytest.fixture
def local_pattern():
    pattern = register(LocalWindow())
    try:
        yield pattern
    finally:
        unregister(LOCAL)


def test_the_built_in_patterns_are_registered_in_minference_order():
    assert registered()[:3] == (VERTICAL_SLASH, A_SHAPE, BLOCK_SPARSE)
    with pytest.raises(ValueError, match="already registered"):
        register(type("Duplicate", (LocalWindow,), {"name": VERTICAL_SLASH})())
    with pytest.raises(ValueError, match="unknown pattern 'nope'; expected one of vertical_and_slash"):
        get_pattern("nope")


def test_a_new_pattern_runs_beside_the_built_in_ones(local_pattern):
    kv_len = random.randrange(300, 600)
    q_len = random.choice([kv_len, random.randrange(100, kv_len)])
    q, k, v = random_qkv(1, 4, 2, kv_len, 32)
    q = q[:, :, kv_len - q_len:].contiguous()
    window = random.randrange(1, 200)
    heads = [HeadPattern(VERTICAL_SLASH, 30, 100), HeadPattern(LOCAL, 0, window),
             HeadPattern(BLOCK_SPARSE, 0, 0), HeadPattern(LOCAL, 0, window)]
    with count_tiles() as tiles:
        out = sparse_prefill(q, k, v, LayerPlan.from_patterns(heads), 32**-0.5)
    # the new pattern's heads against a float64 reference of its definition
    mask = reference.a_shape_mask(kv_len, 0, window, q_len=q_len)
    want = reference.masked_attention(q, k, v, mask.expand(1, 4, -1, -1))
    torch.testing.assert_close(out[:, [1, 3]].double(), want[:, [1, 3]], atol=2e-5, rtol=1e-4)
    # the built-in heads are untouched by their new neighbour
    alone = [heads[0], HeadPattern(A_SHAPE, 4, 64), heads[2], HeadPattern(A_SHAPE, 4, 64)]
    base = sparse_prefill(q, k, v, LayerPlan.from_patterns(alone), 32**-0.5)
    torch.testing.assert_close(out[:, [0, 2]], base[:, [0, 2]])
    # counted under its own name, against its heads' causal tiles
    computed, causal = tiles.by_kind[LOCAL]
    assert causal == 2 * causal_tiles(q_len, kv_len) and 0 < computed <= causal
    assert set(tiles.by_kind) == {VERTICAL_SLASH, LOCAL, BLOCK_SPARSE}


def test_a_new_pattern_is_read_from_configs_and_written_as_a_candidate(local_pattern):
    layer = {"0": [LOCAL, 0, 64, 0], "1": [VERTICAL_SLASH, 30, 100, 0]}
    assert parse_pattern_config([layer], 1, 2) == [[HeadPattern(LOCAL, 0, 64), HeadPattern(VERTICAL_SLASH, 30, 100)]]
    with pytest.raises(ValueError, match="local_window takes a = 0"):
        parse_pattern_config([{"0": [LOCAL, 3, 64, 0], "1": [LOCAL, 0, 64, 0]}], 1, 2)
    assert parse_candidate("lw:0,128") == HeadPattern(LOCAL, 0, 128)
    assert parse_candidate("local_window:0,128") == HeadPattern(LOCAL, 0, 128)
    assert pattern_cost(HeadPattern(LOCAL, 0, 128), 4096) == pattern_cost(HeadPattern(A_SHAPE, 0, 128), 4096)
    q, k, _ = random_qkv(1, 2, 1, 256, 16)
    with pytest.raises(NotImplementedError, match="'local_window' cannot be scored by the search: implement tile_keep"):
        candidate_scores(q, k, [[HeadPattern(LOCAL, 0, 64)]] * 2, with_cost=False)
    unregister(LOCAL)
    with pytest.raises(ValueError, match="unknown pattern 'local_window'"):
        parse_pattern_config([layer], 1, 2)
    register(LocalWindow())  # for the fixture to remove
