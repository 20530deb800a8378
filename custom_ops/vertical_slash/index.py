"""Device-side conversion of (vertical, slash) indices into what the Triton kernel walks.

Queries are the last Sq of the Sk key positions (chunked pre-fill over a KV cache): query
tile m holds q rows [m*bs, (m+1)*bs) and ends at the absolute position e = Sk - Sq + (m+1)*bs;
for Sq == Sk that is the whole pre-fill. Everything below speaks of that absolute e.

Distance space. For query tile m (positions [e - bs, e)) a slash offset s < e covers
keys [e - s - bs, e - s) before clamping; in the distance u = e - j from the tile end that
band is u in [s+1, s+bs], the same for every tile. So the union of the bands is built once
per head, in distance space, and split in two:
- pieces: bs consecutive distances u_lo..u_lo+bs-1 (merged runs cut into bs-long pieces
  from their start, the full ones). Tile m reads piece [u_lo, u_hi] as the keys
  [e - u_hi, e - u_lo]: contiguous, so the kernel addresses them from one scalar (by TMA on
  CUDA), with no mask unless the piece reaches into the tile (u_lo < bs: at most one, the
  causal diagonal) or below the tile's lowest key.
- the rest (the short last piece of each run) packed into one ascending list `dists`, read
  64 at a time as keys e - u through a vector of indices. Packing leaves no half-empty tile
  where two bands overlap: (30, 800) on random input at 128K runs 11% fewer tiles than
  cutting every run into pieces. When the bands de-duplicate (their pieces are masked by the
  column bitmap anyway), the first short piece is read as a whole window instead, ending at
  its run's end and skipping the distances the run's previous piece holds (`SKIP_SHIFT`):
  the estimator's local band 0..99 makes one such piece in every head, and as a window it
  costs the kernel less than a packed chunk.
Bands with e - s < bs are clamped to keys [0, bs): for tiles with such an offset (`clamped`),
keys below bs are served by one extra tile [0, bs) and left out of the tile's bands. A key
both in a band and a column counts once: `dedup` is either a column bitmap the bands check or
the band bitmap in distance space the columns check, whichever side has fewer entries to
check (`dedup_on_bands`).

Everything is fixed-shape tensor code (sort, cumsum, searchsorted, scatter): no host sync,
traceable by torch.compile, the same on CPU and CUDA.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch


class VerticalSlashIndex(NamedTuple):
    """Per-head work lists of the vertical-slash kernel (B, H as q; M = ceil(Sq/bs) query
    tiles, tile m ending at e = Sk - Sq + (m+1)*bs; E = Sk - Sq + M*bs, the last tile end).

    cols: [B, H, NV] int32, the distinct in-range columns ascending, padded with E.
    col_count: [B, H, M] int32, how many of `cols` are < e of tile m.
    piece_lo: [B, H, NS] int32, the pieces' windows [u_lo, u_lo + bs - 1] ascending by u_lo
        (>= 1; at most one < bs), padded with a large value; an entry is u_lo + (skip <<
        SKIP_SHIFT), and the piece's distances are [u_lo + skip, u_lo + bs - 1] (skip > 0 for
        at most one piece per head, and only when the bands de-duplicate).
    piece_ranges: [B, H, M, 2] int32 (r0, r1): tile m reads pieces [0, r1), those with a
        distance <= e - lower; [0, r0) lie wholly within (u_hi <= e - lower), [r0, r1)
        reach below `lower` and are masked (at most one); lower = bs when the tile is
        clamped, else 0.
    dists: [B, H, W] int32, the other distances u the band union covers, ascending, padded
        with a large value; W = dists_width(NS, S, bs).
    dist_count: [B, H, M] int32, how many of `dists` tile m reads: those with u <= e - lower.
    clamped: [B, H, M] int32, 1 when tile m also covers keys [0, bs) through a clamped band.
    dedup: int8 bitmap that makes a key in a band and in the columns count once. When
        `dedup_on_bands(index, bs)` (more columns than slash offsets) it is [B, H, Sk], 1 at
        the columns (the bands skip them); otherwise [B, H, E + 1], 1 at the distances u the
        band union covers (the columns skip them).
    """

    cols: torch.Tensor
    col_count: torch.Tensor
    piece_lo: torch.Tensor
    piece_ranges: torch.Tensor
    dists: torch.Tensor
    dist_count: torch.Tensor
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


def _slot_owners(lengths: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lay the entries of lengths [..., N] (>= 0) end to end over `width` slots; per slot:
    (the entry it falls in, its rank inside that entry, whether any entry reaches it).
    A searchsorted over the running lengths: no loop, no host sync."""
    last = torch.cumsum(lengths, dim=-1)
    slot = torch.arange(width, device=lengths.device).expand(*lengths.shape[:-1], width).contiguous()
    owner = torch.searchsorted(last, slot, right=True).clamp(max=max(lengths.shape[-1] - 1, 0))
    rank = slot - (last.gather(-1, owner) - lengths.gather(-1, owner))
    return owner, rank, slot < last[..., -1:]


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
    owner, rank, used = _slot_owners(npieces, width)
    lo = run_lo.gather(-1, owner) + rank * block_size
    hi = torch.minimum(lo + block_size - 1, run_hi.gather(-1, owner))
    return torch.where(used, lo, big), torch.where(used, hi, big)


def _interval_cover(lo: torch.Tensor, hi: torch.Tensor, span: int, big: int) -> torch.Tensor:
    """[..., span] bool: True at the u < span inside some interval [lo, hi] (pads: lo = big)."""
    live = lo < big
    delta = torch.zeros(*lo.shape[:-1], span + 1, dtype=torch.int32, device=lo.device)
    ones = live.int()
    delta.scatter_add_(-1, torch.where(live, lo.clamp(max=span), span), ones)
    delta.scatter_add_(-1, torch.where(live, (hi + 1).clamp(max=span), span), -ones)
    return torch.cumsum(delta, dim=-1)[..., :span] > 0


def _compact(values: torch.Tensor, keep: torch.Tensor, width: int, big: int) -> torch.Tensor:
    """[..., width] long: the entries of values [..., N] where keep, in their order, padded
    with big (width must be at least the number kept)."""
    slot = torch.cumsum(keep.int(), dim=-1) - 1
    out = torch.full((*values.shape[:-1], width + 1), big, dtype=torch.long, device=values.device)
    out.scatter_(-1, torch.where(keep, slot, width).long(), values.long())
    return out[..., :width]


def _expand_pieces(lo: torch.Tensor, hi: torch.Tensor, keep: torch.Tensor, width: int, big: int) -> torch.Tensor:
    """[..., width] long: the distances of the kept pieces [lo, hi] (ascending, disjoint),
    listed in order and padded with big."""
    if lo.shape[-1] == 0:
        return torch.full((*lo.shape[:-1], width), big, dtype=torch.long, device=lo.device)
    owner, rank, used = _slot_owners(torch.where(keep, hi - lo + 1, 0), width)
    return torch.where(used, lo.gather(-1, owner) + rank, big)


def dists_width(n_offsets: int, seq_len: int, block_size: int) -> int:
    """Width of `VerticalSlashIndex.dists`: NS bands hold at most NS * bs distances, and their
    union at most S + bs - 1 (distances 1 .. S - 1 + bs); at least 1."""
    bands, union = n_offsets * block_size, seq_len + block_size - 1
    # a comparison, not min(): a plain int under torch.compile with a dynamic length
    return max(1, bands if bands <= union else union)


def build_vertical_slash_index(
    v_idx: torch.Tensor, s_idx: torch.Tensor, seq_len: int, block_size: int, q_len: int | None = None
) -> VerticalSlashIndex:
    """Convert v_idx [B, H, NV] and s_idx [B, H, NS] into the kernel's work lists for the last
    q_len (default seq_len) queries of seq_len keys.

    Order and duplicates don't matter; values outside [0, Sk) are ignored. Runs as the op
    `minference_flex::vertical_slash_index`, which torch.compile keeps whole (the same ~60
    eager operations as outside a compiled graph): Inductor in torch 2.11 generated invalid
    CUDA kernels when it fused them.
    """
    q_len = seq_len if q_len is None else q_len
    return VerticalSlashIndex(*vertical_slash_index_op(v_idx, s_idx, seq_len, block_size, q_len))


@torch.library.custom_op("minference_flex::vertical_slash_index", mutates_args=())
def vertical_slash_index_op(
    v_idx: torch.Tensor, s_idx: torch.Tensor, seq_len: int, block_size: int, q_len: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
           torch.Tensor]:
    """The fields of `build_vertical_slash_index`'s result, in `VerticalSlashIndex` order."""
    sorted_idx = sort_indices(v_idx, s_idx, seq_len, block_size, q_len)
    return tuple(index_from_sorted(sorted_idx, seq_len, block_size))


@vertical_slash_index_op.register_fake
def _(v_idx, s_idx, seq_len, block_size, q_len):
    bsz, heads, n_cols = v_idx.shape
    n_offsets = s_idx.shape[-1]
    nblocks = math.ceil(q_len / block_size)

    def new(*shape, dtype=torch.int32):
        return v_idx.new_empty(shape, dtype=dtype)

    dedup_len = seq_len if n_cols > n_offsets else last_tile_end(seq_len, q_len, block_size) + 1
    return (
        new(bsz, heads, n_cols), new(bsz, heads, nblocks), new(bsz, heads, n_offsets),
        new(bsz, heads, nblocks, 2),
        new(bsz, heads, dists_width(n_offsets, seq_len, block_size)), new(bsz, heads, nblocks),
        new(bsz, heads, nblocks), new(bsz, heads, dedup_len, dtype=torch.int8),
    )


class SortedIndices(NamedTuple):
    """v_idx / s_idx sorted, with what every tile reads of them (B, H as q; M query tiles
    ending at e = Sk - Sq + (m+1)*bs; E the last end; long).

    cols: [B, H, NV] the distinct in-range columns ascending, padded with E.
    col_count: [B, H, M] how many of `cols` are < e of tile m.
    offsets: [B, H, NS] the in-range slash offsets ascending (duplicates kept), padded with
        `_pad(E, bs)`.
    clamped: [B, H, M] bool, tile m has an offset in (e - bs, e), clamped to keys [0, bs).
    reach: [B, H, M] the largest band distance u = e - j tile m reads: e, or e - bs if clamped.
    first: Sk - Sq, the position of the first query.
    """

    cols: torch.Tensor
    col_count: torch.Tensor
    offsets: torch.Tensor
    clamped: torch.Tensor
    reach: torch.Tensor
    first: int = 0


def last_tile_end(seq_len: int, q_len: int, block_size: int) -> int:
    """E = Sk - Sq + M*bs, the absolute end of the last query tile (M = ceil(Sq/bs))."""
    return seq_len - q_len + math.ceil(q_len / block_size) * block_size


def _pad(last_end: int, block_size: int) -> int:
    """Pad value of sorted offsets and distances: above every distance a tile reads (<= E)."""
    return 4 * last_end + 4 * block_size


def sort_indices(
    v_idx: torch.Tensor, s_idx: torch.Tensor, seq_len: int, block_size: int, q_len: int | None = None
) -> SortedIndices:
    """The first step of the index build, shared with `sorted_head_fractions`; for the last
    q_len (default seq_len) queries of seq_len keys."""
    q_len = seq_len if q_len is None else q_len
    first = seq_len - q_len
    nblocks = math.ceil(q_len / block_size)
    last_end = last_tile_end(seq_len, q_len, block_size)
    tile_end = first + (torch.arange(nblocks, device=v_idx.device) + 1) * block_size
    # pads sort after every tile end, so col_count never counts them
    cols = _distinct_columns(v_idx, seq_len, last_end)
    col_count = torch.searchsorted(cols, tile_end.expand(*cols.shape[:-1], -1).contiguous())
    offsets = _sorted_in_range(s_idx, seq_len, _pad(last_end, block_size))
    ends = tile_end.expand(*offsets.shape[:-1], -1).contiguous()
    # offsets in (e - bs, e) are clamped to keys [0, bs), which the clamped tile serves
    clamped = torch.searchsorted(offsets, ends) > torch.searchsorted(offsets, ends - block_size, right=True)
    reach = ends - torch.where(clamped, block_size, 0)
    return SortedIndices(cols, col_count, offsets, clamped, reach, first)


def dense_tiles(nblocks: int, first: int, block_size: int) -> int:
    """Key tiles of dense causal attention for M query tiles after `first` cached positions:
    tile m reads keys [0, e), ceil(e / bs) = m + 1 + ceil(first / bs) tiles."""
    return nblocks * (nblocks + 1) // 2 + nblocks * math.ceil(first / block_size)


def sorted_head_fractions(sorted_idx: SortedIndices, block_size: int) -> torch.Tensor:
    """[B, H] float: `head_fractions` of the index these sorted indices build, to within two
    tiles per query tile, without building it (about a third of the operations).

    Tile m is counted as ceil(U / bs) + ceil(col_count / bs) + clamped, where U is how many
    distances u <= reach the union of the bands [s+1, s+bs] holds. The kernel reads the same
    U distances, but in pieces plus packed chunks: one tile per piece it reads (all full but
    the one reaching past reach and the one window that skips distances) plus ceil(D / bs),
    which is ceil(U / bs) or up to two more. The dense count is `dense_tiles`.
    """
    offsets, reach, first = sorted_idx.offsets, sorted_idx.reach, sorted_idx.first
    nblocks = reach.shape[-1]
    pad = _pad(first + nblocks * block_size, block_size)
    if offsets.shape[-1] == 0:
        union = torch.zeros_like(reach)
    else:
        # offset i owns the distances [s_i + 1, s_i + own_i] that no later offset starts in
        following = torch.cat([offsets[..., 1:], torch.full_like(offsets[..., :1], pad)], -1)
        own = torch.where(offsets < pad, (following - offsets).clamp(max=block_size), 0)
        owned_before = torch.cumsum(own, dim=-1) - own
        last = torch.searchsorted(offsets, reach) - 1  # the last offset with s + 1 <= reach
        at = last.clamp(min=0)
        partial = torch.minimum(own.gather(-1, at), reach - offsets.gather(-1, at))
        union = torch.where(last >= 0, owned_before.gather(-1, at) + partial, 0)
    tiles = (union + block_size - 1) // block_size
    tiles = tiles + (sorted_idx.col_count + block_size - 1) // block_size + sorted_idx.clamped.long()
    return tiles.float().sum(-1) / dense_tiles(nblocks, first, block_size)


#: A piece's `piece_lo` entry holds u_lo + (skip << SKIP_SHIFT): the kernel reads the
#: distances [u_lo + skip, u_lo + bs - 1] of the window [u_lo, u_lo + bs - 1] (u_lo < 2^24).
SKIP_SHIFT = 24


def piece_distances(piece_lo: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(first, last) long: the distances [u_lo + skip, u_lo + bs - 1] that each `piece_lo`
    entry reads (padding entries decode to meaningless values: mask them by `piece_ranges`)."""
    raw = piece_lo.long()
    u_lo = raw & ((1 << SKIP_SHIFT) - 1)
    return u_lo + (raw >> SKIP_SHIFT), u_lo + block_size - 1


def index_from_sorted(sorted_idx: SortedIndices, seq_len: int, block_size: int) -> VerticalSlashIndex:
    """The rest of the index build (`build_vertical_slash_index`) after `sort_indices`."""
    cols, col_count, offsets, clamped, reach, first = sorted_idx
    nblocks = col_count.shape[-1]
    device = cols.device
    last_end = first + nblocks * block_size
    big = _pad(last_end, block_size)
    on_bands = cols.shape[-1] > offsets.shape[-1]

    if seq_len + 2 * block_size >= 1 << SKIP_SHIFT:
        raise ValueError(f"vertical-slash attention supports sequences below {(1 << SKIP_SHIFT) - 2 * block_size} "
                         f"tokens, got {seq_len}: split the prompt into chunks")
    # pieces come ascending and disjoint, so both selections below stay ascending
    lo, hi = _band_pieces(offsets, block_size, big)
    live = lo < big
    whole = live & (hi - lo == block_size - 1)
    short = live & ~whole
    # with dedup on the bands, the first short piece [lo, hi] is read as the window
    # [hi - bs + 1, hi], skipping what its run's previous piece holds (see SKIP_SHIFT)
    window = hi - (block_size - 1)
    skipping = short & (torch.cumsum(short.int(), dim=-1) == 1) & (window >= block_size) & on_bands
    as_piece = whole | skipping
    piece_lo = _compact(torch.where(skipping, window, lo), as_piece, lo.shape[-1], big).contiguous()
    skip = _compact(torch.where(skipping, lo - window, 0), as_piece, lo.shape[-1], 0)
    r0 = torch.searchsorted(piece_lo, reach - (block_size - 1), right=True)  # u_hi <= reach
    # pieces with a distance <= reach to read (the first after its skip): ascending as well
    r1 = torch.searchsorted((piece_lo + skip).contiguous(), reach, right=True)
    # every other piece, expanded to its distances (at most bs each)
    dists = _expand_pieces(lo, hi, live & ~as_piece, dists_width(offsets.shape[-1], seq_len, block_size), big)
    dist_count = torch.searchsorted(dists.contiguous(), reach, right=True)

    if on_bands:  # dedup on the bands: mark the columns
        dedup = torch.zeros(*cols.shape[:-1], seq_len + 1, dtype=torch.int8, device=device)
        dedup.scatter_(-1, cols.clamp(max=seq_len), 1)
        dedup = dedup[..., :seq_len]
    else:  # dedup on the columns: mark the distances the bands cover
        span = last_end + 1
        dedup = _interval_cover(offsets + 1, offsets + block_size, span, big).to(torch.int8)

    return VerticalSlashIndex(
        cols=cols.to(torch.int32).contiguous(),
        col_count=col_count.to(torch.int32).contiguous(),
        piece_lo=(piece_lo.clamp(max=2**30) + (skip << SKIP_SHIFT)).to(torch.int32).contiguous(),
        piece_ranges=torch.stack([r0, r1], dim=-1).to(torch.int32).contiguous(),
        dists=dists.clamp(max=2**30).to(torch.int32).contiguous(),
        dist_count=dist_count.to(torch.int32).contiguous(),
        clamped=clamped.to(torch.int32).contiguous(),
        dedup=dedup.contiguous(),
    )


def dedup_on_bands(index: VerticalSlashIndex, seq_len: int) -> bool:
    """True when the bands skip column keys, else the columns skip band keys (see `dedup`:
    [.., Sk] for the one, [.., E + 1] with E >= Sk for the other). Read from static shapes,
    so it never syncs or recompiles."""
    return index.dedup.shape[-1] <= seq_len


def head_tiles(index: VerticalSlashIndex, block_size: int) -> torch.Tensor:
    """[B, H] int64: key tiles the kernel computes for each head (band pieces + distance
    chunks + column chunks + clamped tiles, summed over query tiles)."""
    chunks = (index.dist_count + block_size - 1) // block_size + (index.col_count + block_size - 1) // block_size
    tiles = index.piece_ranges[..., 1] + chunks + index.clamped
    return tiles.long().sum(-1)


def head_fractions(index: VerticalSlashIndex, block_size: int, first: int = 0) -> torch.Tensor:
    """[B, H] float: `head_tiles` over the key tiles of dense causal attention (`dense_tiles`
    for queries after `first` = Sk - Sq cached positions)."""
    nblocks = index.col_count.shape[-1]
    return head_tiles(index, block_size).float() / dense_tiles(nblocks, first, block_size)


def _sum_of_min(cap: int, offset: int, nblocks: int) -> int:
    """sum over m < M of min(cap, m + offset), in closed form (a Python loop over tiles would
    cost ms per call at 1M tokens)."""
    rising = min(max(cap - offset + 1, 0), nblocks)  # tiles with m + offset <= cap
    return rising * (rising - 1) // 2 + rising * offset + (nblocks - rising) * cap


def fraction_bound(n_cols: int, n_offsets: int, nblocks: int, block_size: int, first: int = 0) -> float:
    """Upper bound of `computed_fraction` for NV columns, NS offsets and M query tiles after
    `first` cached positions, from these sizes alone (no device read).

    Tile m (f = ceil(first / bs)) reads keys below e <= (m + 1 + f) * bs. Its pieces and
    distances read disjoint parts of the union of NS bands (at most one piece per band) and,
    all but one straddling piece, of the distances u <= e: at most min(NS + 1, m + f + 3) band
    tiles. Add min(ceil(NV/bs), m + f + 1) column chunks and one clamped tile.
    """
    cached = math.ceil(first / block_size)
    bands = _sum_of_min(n_offsets + 1, 3 + cached, nblocks)
    columns = _sum_of_min(math.ceil(n_cols / block_size), 1 + cached, nblocks)
    return (bands + columns + nblocks) / dense_tiles(nblocks, first, block_size)


def computed_fraction(index: VerticalSlashIndex, block_size: int, first: int = 0) -> torch.Tensor:
    """0-dim float tensor: `head_fractions` averaged over batch and heads."""
    return head_fractions(index, block_size, first).mean()
