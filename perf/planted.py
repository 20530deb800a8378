"""Planted vertical-slash indices of a realistic shape, for the structured benchmark mode.

Random inputs make the estimator pick scattered diagonals (the worst case for any tile-based
kernel); real models concentrate them near the main diagonal. Planted indices: the 30 sink
columns plus random columns; half the diagonals a contiguous local band [0, NS/2), the other
half drawn near the diagonal (exponential distance, mean 2*NS, past the band).
"""

from __future__ import annotations

import torch

from minference_flex.ops.estimate import FORCED_VERTICAL, vertical_slash_counts


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


def planted_per_head(
    batch: int, seq_len: int, verticals: list[int], slashes: list[int], device, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """`planted_vertical_slash` with one budget pair per query head, padded with -1 to the
    widest head (the layout `estimate_vertical_slash` returns for per-head budgets)."""
    heads = [
        planted_vertical_slash(batch, 1, seq_len, nv, ns, "cpu", seed + h) if nv or ns else None
        for h, (nv, ns) in enumerate(zip(verticals, slashes))
    ]
    width_v = max([p[0].shape[-1] for p in heads if p is not None] + [1])
    width_s = max([p[1].shape[-1] for p in heads if p is not None] + [1])
    v_idx = torch.full((batch, len(heads), width_v), -1, dtype=torch.long)
    s_idx = torch.full((batch, len(heads), width_s), -1, dtype=torch.long)
    for h, p in enumerate(heads):
        if p is not None:
            v_idx[:, h, : p[0].shape[-1]] = p[0][:, 0]
            s_idx[:, h, : p[1].shape[-1]] = p[1][:, 0]
    return v_idx.to(device), s_idx.to(device)
