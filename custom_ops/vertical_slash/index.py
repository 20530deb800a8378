"""Device-side conversion of (vertical, slash) indices into what the Triton kernel walks.

Offset space. For query tile m (rows [m*bs, e), e = (m+1)*bs) a slash offset s < e covers
keys [e - s - bs, e - s) before clamping; in the distance u = e - j from the tile end that
band is u in [s+1, s+bs], the same for every tile. So the union of bands is merged and cut
into pieces of at most bs distances once per head, and tile m reads piece [u_lo, u_hi] as
keys [e - u_hi, e - u_lo]. A full piece (bs distances) at u_lo >= bs lies wholly before the
tile, so it needs no mask unless it reaches below the tile's lowest key; such "plain"
pieces are listed first, so the kernel runs them through a loop without masking (about 25%
faster per tile on H100). Bands with e - s < bs are clamped to keys [0, bs): for tiles with
such an offset (`clamped`), keys below bs are served by one extra tile [0, bs) and masked out
of the pieces. A key both in a band and a column counts once: `dedup` is either a column
bitmap the bands check or a band bitmap in offset space the columns check, whichever side
has fewer entries to check (`dedup_on_bands`).

Everything is fixed-shape tensor code (sort, cumsum, searchsorted, scatter): no host sync,
traceable by torch.compile, the same on CPU and CUDA.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch


class VerticalSlashIndex(NamedTuple):
    """Per-head work lists of the vertical-slash kernel (B, H as q; M = ceil(S/bs) tiles).

    cols: [B, H, NV] int32, the distinct in-range columns ascending, padded with M*bs.
    col_count: [B, H, M] int32, how many of `cols` are < e of tile m.
    piece_lo, piece_hi: [B, H, NS] int32, band pieces in offset space, each at most bs long:
        the plain pieces (full, u_lo >= bs; none when the bands de-duplicate) with u_lo
        ascending, then the others with u_lo ascending, then padding (a large value).
    piece_ranges: [B, H, M, 4] int32 (r0, r1, r2, r3) per tile: pieces [0, r0) are plain and
        wholly at keys >= the tile's lowest key (no mask), [r0, r1) are the other plain
        pieces and [r2, r3) the non-plain ones tile m reaches (u_lo <= e), both masked.
    clamped: [B, H, M] int32, 1 when tile m also covers keys [0, bs) through a clamped band.
    dedup: int8 bitmap that makes a key in a band and in the columns count once. When
        `dedup_on_bands(index)` it is [B, H, S], 1 at the columns (the bands skip them);
        otherwise [B, H, M*bs + 1], 1 at the distances u the band union covers (the columns
        skip them).
    """

    cols: torch.Tensor
    col_count: torch.Tensor
    piece_lo: torch.Tensor
    piece_hi: torch.Tensor
    piece_ranges: torch.Tensor
    clamped: torch.Tensor
    dedup: torch.Tensor


def _sorted_in_range(idx: torch.Tensor, seq_len: int, pad: int) -> torch.Tensor:
    """Sort idx ascending with every value outside [0, S) replaced by `pad` (sorted last)."""
    idx = idx.long()
    idx = torch.where((idx >= 0) & (idx < seq_len), idx, pad)
    return idx.sort(dim=-1).values


def _distinct_columns(v_idx: torch.Tensor, seq_len: int, pad: int) -> torch.Tensor:
    cols = _sorted_in_range(v_idx, seq_len, pad)
    repeated = torch.zeros_like(cols, dtype=torch.bool)
    repeated[..., 1:] = cols[..., 1:] == cols[..., :-1]
    return torch.where(repeated, pad, cols).sort(dim=-1).values


def _band_pieces(offsets: torch.Tensor, block_size: int, big: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge bands [s+1, s+bs] of sorted offsets (pads = big) and cut them into <= bs pieces.

    A merged run of k bands spans at most k*bs distances, so it needs at most k pieces: the
    pieces fit in the offsets' own width.
    """
    width = offsets.shape[-1]
    valid = offsets < big
    starts = valid.clone()
    starts[..., 1:] &= offsets[..., 1:] > offsets[..., :-1] + block_size
    ends = valid.clone()
    ends[..., :-1] = valid[..., :-1] & (starts[..., 1:] | ~valid[..., 1:])
    run = torch.cumsum(starts.int(), dim=-1) - 1
    trash = torch.full_like(run, width)
    run_lo = torch.full((*offsets.shape[:-1], width + 1), big, dtype=torch.long, device=offsets.device)
    run_hi = torch.full_like(run_lo, big)
    run_lo.scatter_(-1, torch.where(starts, run, trash), offsets + 1)
    run_hi.scatter_(-1, torch.where(ends, run, trash), offsets + block_size)
    run_lo, run_hi = run_lo[..., :width], run_hi[..., :width]
    nruns = starts.sum(-1, keepdim=True)
    live = torch.arange(width, device=offsets.device) < nruns
    npieces = torch.where(live, (run_hi - run_lo + block_size) // block_size, 0)
    last = torch.cumsum(npieces, dim=-1)
    slot = torch.arange(width, device=offsets.device).expand_as(last).contiguous()
    owner = torch.searchsorted(last, slot, right=True).clamp(max=width - 1)
    first_of_owner = last.gather(-1, owner) - npieces.gather(-1, owner)
    lo = run_lo.gather(-1, owner) + (slot - first_of_owner) * block_size
    hi = torch.minimum(lo + block_size - 1, run_hi.gather(-1, owner))
    used = slot < last[..., -1:]
    return torch.where(used, lo, big), torch.where(used, hi, big)


def _plain_first(
    lo: torch.Tensor,
    hi: torch.Tensor,
    ends: torch.Tensor,
    clamped: torch.Tensor,
    block_size: int,
    big: int,
    none_plain: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reorder pieces (u_lo ascending, pads = big) as plain ones, then the others, each
    ascending; return (lo, hi, ranges [B, H, M, 4]) as described in `VerticalSlashIndex`."""
    valid = lo < big
    plain = valid & (hi - lo == block_size - 1) & (lo >= block_size) & (not none_plain)
    key = torch.where(plain, lo, torch.where(valid, lo + big, 2 * big))
    order = key.argsort(dim=-1)
    lo, hi, plain = lo.gather(-1, order), hi.gather(-1, order), plain.gather(-1, order)
    n_plain = plain.sum(-1, keepdim=True)
    slot = torch.arange(lo.shape[-1], device=lo.device)
    in_plain = slot < n_plain
    lower = torch.where(clamped, block_size, 0)
    plain_lo = torch.where(in_plain, lo, big).contiguous()
    plain_hi = torch.where(in_plain, hi, big).contiguous()
    r1 = torch.searchsorted(plain_lo, ends, right=True)
    r0 = torch.minimum(torch.searchsorted(plain_hi, ends - lower, right=True), r1)
    rest_lo = torch.where(in_plain, -1, lo).contiguous()
    r3 = torch.searchsorted(rest_lo, ends, right=True)
    r2 = n_plain.expand_as(r3)
    return lo, hi, torch.stack([r0, r1, r2, r3], dim=-1)


def build_vertical_slash_index(
    v_idx: torch.Tensor, s_idx: torch.Tensor, seq_len: int, block_size: int
) -> VerticalSlashIndex:
    """Convert v_idx [B, H, NV] and s_idx [B, H, NS] into the kernel's work lists.

    Order and duplicates don't matter; values outside [0, S) are ignored.
    """
    nblocks = math.ceil(seq_len / block_size)
    device = v_idx.device
    big = 4 * nblocks * block_size + 4 * block_size
    tile_end = (torch.arange(nblocks, device=device) + 1) * block_size

    # pads sort after every tile end, so col_count never counts them
    cols = _distinct_columns(v_idx, seq_len, nblocks * block_size)
    col_count = torch.searchsorted(cols, tile_end.expand(*cols.shape[:-1], -1).contiguous())

    offsets = _sorted_in_range(s_idx, seq_len, big)
    piece_lo, piece_hi = _band_pieces(offsets, block_size, big)
    ends = tile_end.expand(*offsets.shape[:-1], -1).contiguous()
    # offsets in (e - bs, e) are clamped to keys [0, bs)
    clamped = torch.searchsorted(offsets, ends) > torch.searchsorted(offsets, ends - block_size, right=True)
    on_bands = cols.shape[-1] > offsets.shape[-1]
    piece_lo, piece_hi, piece_ranges = _plain_first(piece_lo, piece_hi, ends, clamped, block_size, big, on_bands)

    if on_bands:  # dedup on the bands: mark the columns
        dedup = torch.zeros(*cols.shape[:-1], seq_len + 1, dtype=torch.int8, device=device)
        dedup.scatter_(-1, cols.clamp(max=seq_len), 1)
        dedup = dedup[..., :seq_len]
    else:  # dedup on the columns: mark the distances the bands cover
        span = nblocks * block_size + 1
        delta = torch.zeros(*offsets.shape[:-1], span + block_size + 1, dtype=torch.int32, device=device)
        live = offsets < big
        ones = live.int()
        trash = delta.shape[-1] - 1
        delta.scatter_add_(-1, torch.where(live, offsets + 1, trash), ones)
        delta.scatter_add_(-1, torch.where(live, offsets + block_size + 1, trash), -ones)
        dedup = (torch.cumsum(delta, dim=-1)[..., :span] > 0).to(torch.int8)

    return VerticalSlashIndex(
        cols=cols.to(torch.int32).contiguous(),
        col_count=col_count.to(torch.int32).contiguous(),
        piece_lo=piece_lo.clamp(max=2**30).to(torch.int32).contiguous(),
        piece_hi=piece_hi.clamp(max=2**30).to(torch.int32).contiguous(),
        piece_ranges=piece_ranges.to(torch.int32).contiguous(),
        clamped=clamped.to(torch.int32).contiguous(),
        dedup=dedup.contiguous(),
    )


def dedup_on_bands(index: VerticalSlashIndex) -> bool:
    """True when the bands skip column keys (more columns than slash offsets), else the
    columns skip band keys. Decided from static shapes, so it never syncs or recompiles."""
    return index.cols.shape[-1] > index.piece_lo.shape[-1]


def head_fractions(index: VerticalSlashIndex, block_size: int) -> torch.Tensor:
    """[B, H] float: key tiles the kernel computes for each head over those of dense causal
    attention (band pieces + column chunks + clamped tiles, summed over query tiles)."""
    nblocks = index.col_count.shape[-1]
    ranges = index.piece_ranges
    pieces = ranges[..., 1] + ranges[..., 3] - ranges[..., 2]
    tiles = pieces + (index.col_count + block_size - 1) // block_size + index.clamped
    dense = nblocks * (nblocks + 1) // 2
    return tiles.float().sum(-1) / dense


def fraction_bound(index: VerticalSlashIndex, block_size: int) -> float:
    """Upper bound of `computed_fraction` from the index's shapes alone (no device read).

    Tile m reaches at most min(NS, 2m + 3) pieces (disjoint full pieces starting at distance
    <= e, at most m + 1, plus one short piece per run, at most m + 2), min(ceil(NV/bs), m + 1)
    column chunks and one clamped tile.
    """
    nblocks = index.col_count.shape[-1]
    n_pieces, chunks = index.piece_lo.shape[-1], math.ceil(index.cols.shape[-1] / block_size)
    # closed forms of the sums over m < M (a Python loop would cost ms per call at 1M tokens)
    short = min(max((n_pieces - 3) // 2 + 1, 0), nblocks)  # tiles m with 2m + 3 <= NS
    pieces = short * short + 2 * short + (nblocks - short) * n_pieces
    c = min(chunks, nblocks)
    columns = c * (c + 1) // 2 + (nblocks - c) * c
    return (pieces + columns + nblocks) / (nblocks * (nblocks + 1) // 2)


def computed_fraction(index: VerticalSlashIndex, block_size: int) -> torch.Tensor:
    """0-dim float tensor: `head_fractions` averaged over batch and heads."""
    return head_fractions(index, block_size).mean()
