"""A-shape: sink tokens plus a local window per head (MInference's "stream_llm"; config budgets
a = sink tokens, b = local window). No estimation: a FlexAttention BlockMask
(`ops.flex.a_shape_attend`) gives each head its own budgets and the other heads no blocks."""

from __future__ import annotations

import math
from typing import Any

import torch

from minference_flex.ops.flex import a_shape_attend, a_shape_mask_for, block_grid
from minference_flex.patterns.base import GroupInputs, SparsePattern, register
from minference_flex.patterns.events import AttentionCall
from minference_flex.patterns.tiles import TILE

A_SHAPE = "stream_llm"


class AShape(SparsePattern):
    name = A_SHAPE
    label = "A-shape"
    budget_names = ("sink tokens", "local window")
    aliases = ("a", "a-shape")
    spec_help = "a:SINK,LOCAL (e.g. a:128,4096)"

    def check_budgets(self, a: int, b: int) -> str | None:
        if a + b == 0:
            return "stream_llm with 0 sink tokens and a 0 local window attends nothing"
        return None

    def attend(self, q, k, v, group: GroupInputs) -> tuple[torch.Tensor, dict[str, Any]]:
        return a_shape_attend(q, k, v, group.a, group.b, group.scale), {}

    def tiles(self, call: AttentionCall) -> int:
        """The causal 64-tiles that lie in a block (partial or full) of the BlockMask
        FlexAttention runs; the never-attended upper half of a diagonal block and the padding
        rows are not counted."""
        q, k = call.q, call.k
        mask, front = a_shape_mask_for(q, k, call.budgets[0], call.budgets[1])
        q_block, kv_block = mask.BLOCK_SIZE
        q_len, kv_len = q.shape[2], k.shape[2]
        m = torch.arange(math.ceil(q_len / TILE), device=q.device)
        last_row = torch.clamp((m + 1) * TILE, max=q_len) - 1
        # the mask's row blocks holding the tile's first and last rows (front rows come first)
        first_block, last_block = (front + m * TILE) // q_block, (front + last_row) // q_block
        n = torch.arange(math.ceil(kv_len / TILE), device=q.device)
        live = block_grid(mask)[:, list(call.heads)][..., n * TILE // kv_block]  # [B, h, row blocks, key tiles]
        covered = live[:, :, first_block] | live[:, :, last_block]
        causal = n[None, :] <= (kv_len - q_len + last_row)[:, None] // TILE
        return int((covered & causal).sum().item())

    def cost(self, a: int, b: int, seq_len: int, block_size: int = 64) -> float:
        """Exact: per query tile m, the tiles n <= m holding a sink key (n < ceil(a / bs)) or a
        key of the local window of some row (n >= floor((m bs - b + 1) / bs))."""
        nblocks = math.ceil(seq_len / block_size)
        tiles = sum(_tiles_of_row(m, a, b, block_size) for m in range(nblocks))
        return tiles / (nblocks * (nblocks + 1) / 2)


def _tiles_of_row(m: int, init: int, local: int, block_size: int) -> int:
    sink = min(math.ceil(init / block_size), m + 1)
    if local <= 0:
        return sink
    first_local = max(0, (m * block_size - local + 1) // block_size)
    return (m - first_local + 1) + min(sink, first_local)


PATTERN = register(AShape())
