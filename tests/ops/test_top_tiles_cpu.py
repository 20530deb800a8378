"""`minference_flex::top_tiles` (Triton interpreter) against torch.topk's selection."""

from __future__ import annotations

import pytest
import torch

from custom_ops.top_tiles import top_tiles
from minference_flex.ops.estimate import _top_tiles_torch


def check_selection(scores: torch.Tensor, tiles: torch.Tensor, count: torch.Tensor, topk: int) -> None:
    """Row m keeps min(topk, m + 1) of the tiles n <= m with the largest scores, minus the
    diagonal: the kept scores (plus the diagonal's when it was among them) must be exactly the
    top values of the row; with ties any of the tied tiles may be kept."""
    scores, tiles, count = scores.float().cpu(), tiles.cpu(), count.cpu()
    nblocks = scores.shape[-1]
    assert tiles.shape[-1] == min(topk, nblocks)
    for (b, h, m), c in zip(torch.cartesian_prod(*(torch.arange(n) for n in count.shape)).tolist(), count.flatten().tolist()):
        want = min(topk, m + 1)
        kept = tiles[b, h, m, :c].long()
        assert (tiles[b, h, m, c:] == nblocks).all(), "padding must be M"
        assert (kept < m).all() and kept.unique().numel() == c
        values = scores[b, h, m, kept].tolist()
        if c == want - 1:
            values.append(scores[b, h, m, m].item())
        else:
            assert c == want, (m, c, want)
        top = scores[b, h, m, : m + 1].topk(want).values.tolist()
        assert sorted(values) == sorted(top), (m, values, top)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape_topk", [((1, 2, 37, 37), 5), ((2, 1, 70, 70), 10), ((1, 1, 40, 40), 100), ((1, 1, 33, 33), 1)])
def test_top_tiles_matches_topk(dtype, shape_topk):
    shape, topk = shape_topk
    scores = torch.randn(shape)
    if dtype == torch.float16:
        scores = (scores * 4).round() / 4  # many ties
    scores[..., 3] = -0.0
    scores = scores.to(dtype)
    tiles, count = top_tiles(scores, topk)
    check_selection(scores, tiles, count, topk)
    assert ((tiles[..., 1:] > tiles[..., :-1]) | (tiles[..., 1:] == shape[-1])).all(), "ascending"
    check_selection(scores, *_top_tiles_torch(scores, topk), topk)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_top_tiles_in_chunks(dtype):
    """Rows longer than the kernel's chunk: histograms, counts, ties and slots carry across
    chunks (16-bit keys: 2 passes, 32-bit: 4)."""
    from custom_ops.top_tiles.kernel import launch_top_tiles

    scores = ((torch.randn(1, 2, 40, 40) * 3).round() / 3).to(dtype)
    scores[..., 2] = -0.0
    for topk in (3, 20, 50):  # up to 5 chunks of 8 per row
        check_selection(scores, *launch_top_tiles(scores, topk, chunk=8), topk)


def test_top_tiles_rejects_other_dtypes():
    with pytest.raises(TypeError, match="top_tiles takes fp32, bf16 or fp16"):
        top_tiles(torch.zeros(1, 1, 4, 4, dtype=torch.float64), 2)
