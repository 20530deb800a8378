"""Block-sparse: per query tile, the `topk` key tiles of highest pooled score plus its own
diagonal tiles (MInference's "block_sparse"; the config's budgets are ignored, MInference keeps
the top 100 tiles of 64). The tiles are chosen on the device (`ops.estimate.select_block_sparse_tiles`)
and attended through a FlexAttention BlockMask (`ops.flex.block_sparse_flex`)."""

from __future__ import annotations

import math
from typing import Any

import torch

from minference_flex.ops.estimate import select_block_sparse_tiles
from minference_flex.ops.flex import block_sparse_flex
from minference_flex.patterns.base import GroupInputs, SparsePattern, head_mask, register
from minference_flex.patterns.events import AttentionCall
from minference_flex.patterns.tiles import causal_tiles, check_tile

BLOCK_SPARSE = "block_sparse"
#: Tiles block-sparse heads keep, as MInference does.
BLOCK_SPARSE_TOPK = 100


class BlockSparse(SparsePattern):
    name = BLOCK_SPARSE
    label = "BS"
    budget_names = ("ignored", "ignored")
    aliases = ("bs",)
    takes_budgets = False
    spec_help = "bs (the top 100 tiles)"

    def __init__(self, topk: int = BLOCK_SPARSE_TOPK) -> None:
        #: Key tiles each query tile keeps besides its own.
        self.topk = topk
        #: estimator(q, k, topk, block_size) -> (tiles [B, H, Mq, topk], count [B, H, Mq]);
        #: replace it through `minference_flex.patterns.override_estimator`.
        self.estimator = select_block_sparse_tiles

    def attend(self, q, k, v, group: GroupInputs) -> tuple[torch.Tensor, dict[str, Any]]:
        chosen, count = self.estimator(q, k, self.topk, group.block_size)
        on = head_mask(group.heads, q.shape[1], q.device) if len(group.heads) < q.shape[1] else None
        out = block_sparse_flex(q, k, v, chosen, count, group.block_size, group.scale, on)
        return out, {"count": count}

    def tile_keep(self, q, k, group: GroupInputs, tiles: list[int]) -> torch.Tensor:
        """The chosen tiles plus the diagonal tile of each sampled query tile (every head: the
        caller keeps the group's)."""
        chosen = self.estimator(q, k, self.topk, group.block_size)[0]
        nblocks = chosen.shape[2]
        sampled = torch.tensor(tiles, device=chosen.device)
        picked = chosen[:, :, sampled].long()  # padding entries are M: dropped below
        keep = torch.zeros(*picked.shape[:-1], nblocks + 1, dtype=torch.bool, device=chosen.device)
        keep.scatter_(-1, picked, True)
        keep = keep[..., :nblocks].contiguous()
        keep[:, :, torch.arange(len(tiles), device=keep.device), sampled] = True
        return keep

    def tiles(self, call: AttentionCall) -> int:
        """The chosen tiles plus each query tile's own: chosen tiles lie below its first own tile
        n0 = m + (Sk - Sq) // bs, and its own tiles run from n0 to its causal end (1 or 2), so
        they are its causal tiles less n0."""
        check_tile(call.block_size)
        count, bs = call.index["count"], call.block_size
        q_len, kv_len = call.q.shape[2], call.k.shape[2]
        nblocks = math.ceil(q_len / bs)
        shift = (kv_len - q_len) // bs
        below_own = nblocks * (nblocks - 1) // 2 + nblocks * shift  # sum of n0 over query tiles
        per_head = causal_tiles(q_len, kv_len) - below_own
        rows = count.shape[0] * len(call.heads)
        return int(count[:, list(call.heads)].sum().item()) + rows * per_head

    def cost(self, a: int, b: int, seq_len: int, block_size: int = 64) -> float:
        """An upper bound by one tile on each query tile m >= topk whose diagonal tile is itself
        among its top-k (kept once): min(topk, m) + 1 per query tile."""
        nblocks = math.ceil(seq_len / block_size)
        tiles = sum(min(self.topk, m) + 1 for m in range(nblocks))
        return tiles / (nblocks * (nblocks + 1) / 2)


PATTERN = register(BlockSparse())
