"""Planted vertical-slash indices of a realistic shape, for the structured benchmark mode.

Random inputs make the estimator pick scattered diagonals (the worst case for any tile-based
kernel); real models concentrate them near the main diagonal. Planted indices: the 30 sink
columns plus random columns; half the diagonals a contiguous local band [0, NS/2), the other
half drawn near the diagonal (exponential distance, mean 2*NS, past the band).
"""

from __future__ import annotations

import torch

from minference_flex.estimate import FORCED_VERTICAL, vertical_slash_counts


def planted_vertical_slash(
    batch: int, heads: int, seq_len: int, vertical_size: int, slash_size: int, device, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    nv, ns = vertical_slash_counts(seq_len, vertical_size, slash_size)
    sinks = torch.arange(FORCED_VERTICAL).expand(batch, heads, -1)
    columns = torch.randint(0, seq_len, (batch, heads, nv - FORCED_VERTICAL), generator=gen)
    v_idx = torch.cat([sinks, columns], -1)[..., :nv]
    band = ns // 2
    local = torch.arange(band).expand(batch, heads, -1)
    far = band + torch.empty(batch, heads, ns - band).exponential_(1 / (2 * ns), generator=gen).long()
    s_idx = torch.cat([local, far.clamp(max=seq_len - 1)], -1)
    return v_idx.to(device), s_idx.to(device)
