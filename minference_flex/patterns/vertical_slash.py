"""Vertical-slash: a few key columns plus a few diagonals per head (MInference's
"vertical_and_slash"; config budgets a = vertical size, b = slash size).

The columns and diagonals are estimated from the last `last_q` queries against all keys
(`ops.estimate.estimate_vertical_slash`); the Triton op (`custom_ops.vertical_slash`) attends
them, or runs dense attention when the index would cover more than DENSE_FALLBACK_FRACTION.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from custom_ops.vertical_slash import head_tiles, sparse_index
from minference_flex.ops import exact_masks
from minference_flex.ops.attention import (
    DENSE_FALLBACK_FRACTION,
    dense_attention,
    fallback_threshold,
    vertical_slash_sparse_attention,
)
from minference_flex.ops.estimate import FORCED_SLASH, FORCED_VERTICAL, estimate_vertical_slash, vertical_slash_counts
from minference_flex.patterns.base import GroupInputs, SparsePattern, head_mask, register
from minference_flex.patterns.events import AttentionCall
from minference_flex.patterns.tiles import causal_tiles, check_tile

VERTICAL_SLASH = "vertical_and_slash"


class VerticalSlash(SparsePattern):
    name = VERTICAL_SLASH
    label = "VS"
    budget_names = ("vertical size", "slash size")
    aliases = ("vs",)
    spec_help = "vs:VERTICAL,SLASH (e.g. vs:1000,6096)"

    def __init__(self) -> None:
        #: estimator(q, k, verticals, slashes, last_q, scale) -> (v_idx [B, H, NV], s_idx [B, H, NS]);
        #: replace it through `minference_flex.patterns.override_estimator`.
        self.estimator = estimate_vertical_slash

    def estimate(self, q: torch.Tensor, k: torch.Tensor, group: GroupInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """The group's columns and diagonals; -1 on the heads of other patterns."""
        v_idx, s_idx = self.estimator(q, k, list(group.a), list(group.b), group.last_q, group.scale)
        if len(group.heads) < q.shape[1]:
            keep = head_mask(group.heads, q.shape[1], q.device)[None, :, None]
            v_idx, s_idx = torch.where(keep, v_idx, -1), torch.where(keep, s_idx, -1)
        return v_idx, s_idx

    def attend(self, q, k, v, group: GroupInputs) -> tuple[torch.Tensor, dict[str, Any]]:
        v_idx, s_idx = self.estimate(q, k, group)
        index = {"v_idx": v_idx, "s_idx": s_idx}
        if group.exact_masks:
            return self._attend_masked(q, k, v, v_idx, s_idx, group), index
        out = vertical_slash_sparse_attention(q, k, v, v_idx, s_idx, group.block_size, group.scale,
                                              group.dense_fallback)
        return out, index

    @staticmethod
    def _attend_masked(q, k, v, v_idx, s_idx, group: GroupInputs) -> torch.Tensor:
        """The group's heads through their exact mask (`ops.exact_masks`): the op's own
        dense-fallback decision, then masked SDPA over the same indices; other rows empty."""
        out = torch.zeros_like(q)
        rows = list(group.heads)
        threshold = fallback_threshold(group.dense_fallback)
        if sparse_index(q, k, v_idx, s_idx, group.block_size, threshold) is None:
            kv_rows = [h // (q.shape[1] // k.shape[1]) for h in rows]  # the op's fallback: dense
            out[:, rows] = dense_attention(q[:, rows], k[:, kv_rows], v[:, kv_rows], group.scale)
        else:
            mask = exact_masks.vertical_slash_mask(v_idx[:, rows], s_idx[:, rows], q.shape[2], k.shape[2],
                                                   group.block_size)
            out[:, rows] = exact_masks.masked_attention(q, k, v, mask, rows, group.scale)
        return out

    def tiles(self, call: AttentionCall) -> int:
        """The tiles of the op's index for the call's heads (`custom_ops.vertical_slash.head_tiles`),
        or all their causal tiles where the op falls back to dense (its own decision)."""
        check_tile(call.block_size)
        q, k = call.q, call.k
        index = sparse_index(q, k, call.index["v_idx"], call.index["s_idx"], call.block_size,
                             fallback_threshold(call.dense_fallback))
        if index is None:
            return q.shape[0] * len(call.heads) * causal_tiles(q.shape[2], k.shape[2])
        return int(head_tiles(index, call.block_size)[:, list(call.heads)].sum().item())

    def cost(self, a: int, b: int, seq_len: int, block_size: int = 64) -> float:
        """An estimate for random input (on structured attention often far below): budgets clamped
        as `vertical_slash_counts` does to (NV, NS); per query tile m (e = (m+1) bs), ceil(band
        distances below e / bs) + ceil(columns below e / bs) + 1 clamped tile where a band is
        clamped. The forced offsets 0..99 cover distances 1..99+bs; the other NS - 100 offsets are
        taken as uniformly random, so their bands cover an expected 1 - exp(-(NS - 100) bs / (S -
        100)) of the distances beyond; the NV - 30 columns are spread evenly; band chunks capped
        at m + 1. Above DENSE_FALLBACK_FRACTION it costs 1.0: the op then runs dense."""
        nblocks = math.ceil(seq_len / block_size)
        nv, ns = vertical_slash_counts(seq_len, a, b)
        tiles = sum(_tiles_of_row(m, nv, ns, seq_len, block_size) for m in range(nblocks))
        frac = tiles / (nblocks * (nblocks + 1) / 2)
        return 1.0 if frac > DENSE_FALLBACK_FRACTION else frac


def _tiles_of_row(m: int, nv: int, ns: int, seq_len: int, block_size: int) -> float:
    end = (m + 1) * block_size
    forced_s = min(FORCED_SLASH, ns)
    spread_s = ns - forced_s
    forced_distances = min(forced_s + block_size - 1, end) if forced_s else 0  # one run 1..s+bs-1
    # random bands of width bs at density spread_s / (S - forced_s) cover this share of distances
    spread_cover = 1.0 - math.exp(-spread_s * block_size / max(seq_len - forced_s, 1))
    spread_distances = spread_cover * min(max(end - forced_s - block_size + 1, 0), seq_len - forced_s)
    band_chunks = min(math.ceil((forced_distances + spread_distances) / block_size), m + 1)
    forced_v = min(FORCED_VERTICAL, nv)
    spread_v = nv - forced_v
    columns = min(forced_v, end) + spread_v * min(max(end - forced_v, 0), seq_len - forced_v) / max(
        seq_len - forced_v, 1
    )
    column_tiles = min(math.ceil(columns / block_size), m + 1)
    if m * block_size + 2 <= forced_s:  # a forced offset in (e - bs, e)
        clamped = 1.0
    else:
        clamped = min(1.0, spread_s * (block_size - 1) / max(seq_len - forced_s, 1)) if end > forced_s else 0.0
    return band_chunks + column_tiles + clamped


PATTERN = register(VerticalSlash())
