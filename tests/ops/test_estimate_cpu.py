"""estimate_vertical_slash against the float64 reference scores."""

from __future__ import annotations

import pytest
import torch

import minference_flex as mf
from minference_flex.ops import reference
from minference_flex.ops.estimate import FORCED_SLASH, FORCED_VERTICAL
from tests.helpers import random_qkv


@pytest.mark.parametrize("shape", [(2, 4, 2, 500, 64), (1, 3, 1, 130, 128), (1, 2, 2, 77, 32)])
def test_estimate_picks_top_scores(shape):
    b, h, hk, s, d = shape
    q, k, _ = random_qkv(b, h, hk, s, d)
    nv, ns = 40, 120
    v_idx, s_idx = mf.estimate_vertical_slash(q, k, nv, ns)
    nv_out, ns_out = mf.vertical_slash_counts(s, nv, ns)
    assert v_idx.shape == (b, h, nv_out) and s_idx.shape == (b, h, ns_out)
    vertical, slash = reference.estimate_vertical_slash_scores(q, k)
    for idx, scores, forced in ((v_idx, vertical, FORCED_VERTICAL), (s_idx, slash, FORCED_SLASH)):
        assert (idx.sort(-1).values.diff(dim=-1) > 0).all(), "indices must be distinct"
        forced_ids = torch.arange(min(forced, s))
        assert torch.isin(forced_ids, idx).all() if b * h == 1 else all(
            torch.isin(forced_ids, row).all() for row in idx.flatten(0, 1)
        )
        # the rest are the best-scoring ones: their score total equals the top-k total
        rest = scores.clone()
        rest[..., :forced] = float("-inf")
        n_rest = idx.shape[-1] - min(forced, s)
        best = rest.topk(n_rest, -1).values.sum(-1)
        got = rest.gather(-1, idx).clamp(min=0).sum(-1)
        torch.testing.assert_close(got, best, rtol=1e-5, atol=1e-6)


def test_budgets_clamped_and_raised():
    assert mf.vertical_slash_counts(2048, 1000, 6096) == (1000, 2048)
    assert mf.vertical_slash_counts(2048, 3, 7) == (FORCED_VERTICAL, FORCED_SLASH)
    assert mf.vertical_slash_counts(20, 3, 7) == (20, 20)
    q, k, _ = random_qkv(1, 2, 1, 20, 64)
    v_idx, s_idx = mf.estimate_vertical_slash(q, k, 3500, 100)
    assert v_idx.shape[-1] == 20 and s_idx.shape[-1] == 20


def test_structured_heads_are_found():
    """Planted column 77 and diagonal 150 dominate: the estimator must find both."""
    s, d = 600, 64
    q, k, _ = random_qkv(1, 1, 1, s, d)
    q, k = q * 0.1, k * 0.1
    direction = torch.randn(d)
    q[..., :, :] += direction
    k[..., 77, :] += 3 * direction
    v_idx, _ = mf.estimate_vertical_slash(q, k, 31, 100)
    assert 77 in v_idx.flatten().tolist()
    k2 = torch.randn(1, 1, s, d) * 0.1
    q2 = torch.randn(1, 1, s, d) * 0.1
    q2[0, 0, 150:] += 3 * k2[0, 0, :-150]  # query i matches key i - 150
    _, s_idx = mf.estimate_vertical_slash(q2, k2, 30, 101)
    assert 150 in s_idx.flatten().tolist()


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(2, 2, 1, 333, 64, 64), (1, 2, 1, 500, 32, 100), (1, 1, 1, 40, 16, 40)])
def test_fused_sums_match_torch(shape):
    """The Triton estimator sums (CUDA's path, run here interpreted) equal the PyTorch path:
    through the op (CPU step sizes) and with CUDA's steps (2 rows x 2048 keys: one key block
    spans the whole row)."""
    from custom_ops.vertical_slash_scores import vertical_slash_scores
    from custom_ops.vertical_slash_scores.kernel import _row_stats_launch, _sums_launch
    from minference_flex.ops.estimate import _diagonal_sums, grouped_last_probs, _grouped_last_scores

    b, h, hk, s, d, last_q = shape
    q, k, _ = random_qkv(b, h, hk, s, d)
    scores = _grouped_last_scores(q, k, last_q, d**-0.5)
    probs = grouped_last_probs(q, k, last_q, d**-0.5)
    for vertical, slash in (vertical_slash_scores(scores), _sums_launch(scores, *_row_stats_launch(scores, 128))):
        torch.testing.assert_close(vertical, probs.sum(-2), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(slash, _diagonal_sums(probs), rtol=1e-5, atol=1e-6)
    # one side only: the other comes back empty
    vertical, slash = vertical_slash_scores(scores, columns=True, diagonals=False)
    assert slash.shape == (b, h, 0)
    torch.testing.assert_close(vertical, probs.sum(-2), rtol=1e-5, atol=1e-6)
    vertical, slash = vertical_slash_scores(scores, columns=False, diagonals=True)
    assert vertical.shape == (b, h, 0)
    torch.testing.assert_close(slash, _diagonal_sums(probs), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("budgets,scored", [
    ((30, 100), None), ((12, 800), (False, True)), ((3500, 7), (True, False)), ((0, 0), None),
])
def test_always_kept_budgets_skip_their_scores(monkeypatch, budgets, scored):
    """A budget no larger than the always-kept set returns exactly that set; only the other
    side's scores are computed (none for (30, 100))."""
    from minference_flex.ops import estimate

    b, h, hk, s, d = 2, 4, 2, 500, 64
    q, k, _ = random_qkv(b, h, hk, s, d)
    calls = []
    real = estimate.last_query_sums
    monkeypatch.setattr(estimate, "last_query_sums", lambda *a: calls.append(a[-2:]) or real(*a))
    v_idx, s_idx = mf.estimate_vertical_slash(q, k, *budgets)
    assert calls == ([] if scored is None else [scored])
    v_full, s_full = reference.estimate_vertical_slash_scores(q, k)
    nv, ns = mf.vertical_slash_counts(s, *budgets)
    for idx, n, forced, scores in ((v_idx, nv, FORCED_VERTICAL, v_full), (s_idx, ns, FORCED_SLASH, s_full)):
        assert idx.shape == (b, h, n)
        if n <= forced:
            assert (idx == torch.arange(n)).all()
        else:
            rest = scores.clone()
            rest[..., :forced] = float("-inf")
            best = rest.topk(n - forced, -1).values.sum(-1)
            torch.testing.assert_close(rest.gather(-1, idx).clamp(min=0).sum(-1), best, rtol=1e-5, atol=1e-6)


def test_estimators_in_head_chunks_match_whole(monkeypatch):
    """A score-buffer budget that forces one K head per chunk gives the same indices."""
    from minference_flex.ops import estimate

    q, k, _ = random_qkv(2, 6, 3, 400, 32)
    whole_vs = mf.estimate_vertical_slash(q, k, 40, 70)
    whole_bs = mf.select_block_sparse_tiles(q, k, 3)
    monkeypatch.setattr(estimate, "SCORE_BUFFER_BYTES", 1)
    assert len(estimate._kv_head_chunks(k.shape[1], 2, 10)) == 3
    for a, b in zip(whole_vs, mf.estimate_vertical_slash(q, k, 40, 70)):
        torch.testing.assert_close(a.sort(-1).values, b.sort(-1).values)
    tiles, count = mf.select_block_sparse_tiles(q, k, 3)
    torch.testing.assert_close(count, whole_bs[1])
    torch.testing.assert_close(tiles.sort(-1).values, whole_bs[0].sort(-1).values)


def test_always_kept_shortcut_compiles_fullgraph():
    q, k, _ = random_qkv(1, 4, 2, 300, 32)

    def estimate(q, k):
        return (*mf.estimate_vertical_slash(q, k, 40, 100), *mf.estimate_vertical_slash(q, k, 30, 100))

    for got, want in zip(torch.compile(estimate, fullgraph=True)(q, k), estimate(q, k)):
        torch.testing.assert_close(got.sort(-1).values, want.sort(-1).values)
