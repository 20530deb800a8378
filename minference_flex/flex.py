"""FlexAttention calls and BlockMasks built on the device from block indices.

Masks are built with `BlockMask.from_kv_blocks` from index tensors (full blocks apart from
partial ones, so only partial blocks pay for mask_mod), never by evaluating a mask_mod over
the S x S grid. mask_mod functions read their parameters from captured tensors, so new values
never recompile. Masks are built at H = number of query heads (FlexAttention maps query head
h to mask head h % H_mask).
"""

from __future__ import annotations

import functools
import math

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention

#: Tile of A-shape masks (query rows x keys); a multiple of every backend's kernel tile.
A_SHAPE_BLOCK = 128
#: FlexAttention runs on lengths padded to a multiple of this, handed to the compiler as
#: [.., n, FLEX_ALIGN, ..] blocks: a length it can prove divisible needs no bounds checks
#: (about 20% faster at 128K on H100) and one dynamic-shape kernel serves every length.
#: Padding is free of masks: every pattern is causal, so no real query sees a padded key.
FLEX_ALIGN = 128


def flex_padded_length(seq_len: int) -> int:
    """The length FlexAttention masks must be built for: seq_len rounded up to FLEX_ALIGN."""
    return math.ceil(seq_len / FLEX_ALIGN) * FLEX_ALIGN


def _flex_on_blocks(q, k, v, block_mask, scale, enable_gqa, kernel_options):
    if q.dim() == 5:
        q, k, v = (t.flatten(2, 3) for t in (q, k, v))
    return flex_attention(
        q,
        k,
        v,
        block_mask=block_mask,
        scale=scale,
        enable_gqa=enable_gqa,
        kernel_options=kernel_options,
    )


@functools.cache
def _compiled_flex():
    return torch.compile(_flex_on_blocks)


def _kernel_options(q: torch.Tensor, block_mask: BlockMask) -> dict | None:
    """Kernel tiles matching the mask's blocks, as measured best on H100 (perf/tune_kernels.py).
    64-row tiles: 4 warps, 3 stages (block-sparse top-100 at 128K: 31 ms against 49 ms), K/V
    loaded by TMA (31.7 ms against 34.5 ms; Inductor turns it off where the GPU has no TMA)."""
    if not q.is_cuda:
        return None
    q_block, kv_block = block_mask.BLOCK_SIZE
    if q_block < 128:
        return {"BLOCK_M": q_block, "BLOCK_N": min(kv_block, 64), "num_warps": 4, "num_stages": 3,
                "USE_TMA": True}
    if kv_block >= 128:  # A-shape at 128K: 21.0 ms against 22.2 ms with (128, 64) tiles; TMA 19.4
        return {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 3, "USE_TMA": True}
    return {"BLOCK_M": 128, "BLOCK_N": 64}


def flex_attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask, scale: float
) -> torch.Tensor:
    """FlexAttention of q [B, H, S, D] over k, v [B, Hkv, S, D] with `block_mask`; [B, H, S, D].

    `block_mask` is built for `flex_padded_length(S)`. Compiled by Inductor (eager flex would
    materialise S x S scores); inside a caller's torch.compile region it is traced instead.
    K and V are contiguous because FlexAttention computes KV offsets in int32 up to 2.13.
    """
    seq_len = q.shape[2]
    padded = flex_padded_length(seq_len)
    enable_gqa = q.shape[1] != k.shape[1]
    options = _kernel_options(q, block_mask)
    if padded != seq_len:
        q, k, v = (torch.nn.functional.pad(t, (0, 0, 0, padded - seq_len)) for t in (q, k, v))
    if q.is_cuda:  # Inductor's CPU flex template reads the sizes of the unviewed buffer
        q, k, v = (t.contiguous().unflatten(2, (-1, FLEX_ALIGN)) for t in (q, k, v))
    fn = _flex_on_blocks if torch.compiler.is_compiling() else _compiled_flex()
    out = fn(q, k, v, block_mask, scale, enable_gqa, options)
    return out[:, :, :seq_len]


def _compact(blocks: torch.Tensor, keep: torch.Tensor, fill: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Move the kept entries of blocks [..., W] to the front in ascending order; (indices, count)."""
    ordered = torch.where(keep, blocks, fill).sort(dim=-1).values
    return ordered.to(torch.int32).contiguous(), keep.sum(-1, dtype=torch.int32).contiguous()


def _pad_width(indices: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - indices.shape[-1]
    if missing <= 0:
        return indices
    return torch.nn.functional.pad(indices, (0, missing), value=0).contiguous()


def _from_kv_blocks(
    partial: tuple[torch.Tensor, torch.Tensor],
    full: tuple[torch.Tensor, torch.Tensor],
    block: int,
    seq_len: int,
    mask_mod,
) -> BlockMask:
    idx, num = partial
    full_idx, full_num = full
    # The CUDA kernel addresses partial and full lists with one set of strides, so both get
    # one width. Inductor's CPU template also asserts that the width spans the sequence.
    width = max(idx.shape[-1], full_idx.shape[-1])
    if idx.device.type == "cpu":
        width = max(width, math.ceil(seq_len / block))
    idx, full_idx = _pad_width(idx, width), _pad_width(full_idx, width)
    return BlockMask.from_kv_blocks(
        num,
        idx,
        full_num,
        full_idx,
        BLOCK_SIZE=block,
        mask_mod=mask_mod,
        seq_lengths=(seq_len, seq_len),
        compute_q_blocks=False,
    )


def a_shape_block_mask(
    batch: int,
    heads: int,
    seq_len: int,
    init_num: int | tuple[int, ...],
    local_window_num: int | tuple[int, ...],
    device: torch.device,
    block: int = A_SHAPE_BLOCK,
) -> BlockMask:
    """BlockMask of A-shape attention (see `_build_a_shape_block_mask`), cached outside
    torch.compile: it depends only on its integer arguments and is reused across layers.

    init_num and local_window_num are one int for every head or a tuple of one per query
    head; a head with (0, 0) gets no blocks at all (it belongs to another pattern).
    """
    if isinstance(init_num, int):
        init_num = (init_num,) * heads
    if isinstance(local_window_num, int):
        local_window_num = (local_window_num,) * heads
    args = (batch, heads, seq_len, tuple(init_num), tuple(local_window_num), torch.device(device), block)
    if torch.compiler.is_compiling():
        return _build_a_shape_block_mask(*args)
    return _cached_a_shape_block_mask(*args)


@functools.lru_cache(maxsize=16)
def _cached_a_shape_block_mask(*args) -> BlockMask:
    return _build_a_shape_block_mask(*args)


def _build_a_shape_block_mask(
    batch: int,
    heads: int,
    seq_len: int,
    init_num: tuple[int, ...],
    local_window_num: tuple[int, ...],
    device: torch.device,
    block: int = A_SHAPE_BLOCK,
) -> BlockMask:
    """BlockMask of A-shape attention: for head h, query i attends key j iff
    j <= i and (j < init_num[h] or i - j < local_window_num[h]).

    Query block m needs the sink blocks [0, ceil(init/bs)) and the local blocks from the one
    holding key m*bs - local + 1 up to m; a block is full when every (i, j) pair in it passes.
    Slots: [0, W_sink) for sinks, then W_local for the local run, per head [H, M, W].
    """
    nblocks = math.ceil(seq_len / block)
    n_sink_h = [min(math.ceil(i / block), nblocks) for i in init_num]
    w_sink = max(n_sink_h)
    w_local = min(max(math.ceil(max(w - 1, 0) / block) + 2 for w in local_window_num), nblocks)
    init_t = torch.tensor(init_num, device=device)
    local_t = torch.tensor(local_window_num, device=device)
    n_sink = torch.tensor(n_sink_h, device=device)[:, None, None]
    init_h, local_h = init_t[:, None, None], local_t[:, None, None]
    m = torch.arange(nblocks, device=device)[None, :, None]
    slot = torch.arange(w_sink + w_local, device=device)[None, None, :]
    local_first = torch.clamp(m * block - local_h + 1, min=0) // block
    local_first = torch.maximum(local_first, n_sink)
    is_sink = slot < w_sink
    kv = torch.where(is_sink, slot, local_first + slot - w_sink)
    live = (kv <= m) & torch.where(is_sink, slot < n_sink, local_h > 0)
    full_sink = is_sink & ((kv + 1) * block <= init_h)
    full_local = ~is_sink & ((m + 1) * block - 1 - kv * block < local_h)
    full = live & (kv < m) & (full_sink | full_local)
    shape = (batch, heads, nblocks, w_sink + w_local)
    kv = kv.expand(shape)

    budgets = {(i, w) for i, w in zip(init_num, local_window_num) if i + w > 0}
    if len(budgets) == 1:
        # one budget for every active head (heads without blocks never reach mask_mod):
        # plain ints, which also keeps Inductor's CPU template away from captured tensors
        init_i, local_i = budgets.pop()

        def a_shape(b, h, q_idx, kv_idx):
            return (q_idx >= kv_idx) & ((kv_idx < init_i) | (q_idx - kv_idx < local_i))
    else:

        def a_shape(b, h, q_idx, kv_idx):
            return (q_idx >= kv_idx) & ((kv_idx < init_t[h]) | (q_idx - kv_idx < local_t[h]))

    return _from_kv_blocks(
        _compact(kv, (live & ~full).expand(shape), nblocks),
        _compact(kv, full.expand(shape), nblocks),
        block,
        seq_len,
        a_shape,
    )


def _causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def block_sparse_block_mask(
    tiles: torch.Tensor,
    count: torch.Tensor,
    seq_len: int,
    block_size: int,
    active_heads: torch.Tensor | None = None,
) -> BlockMask:
    """BlockMask from `estimate.select_block_sparse_tiles` output, for the padded length of
    `seq_len`: the chosen tiles are full, the diagonal tile of each query tile is the one
    partial (causal) tile; query tiles past the sequence get no full tiles. Heads where
    `active_heads` [H] bool is False get no blocks at all (they belong to another pattern)."""
    nblocks = flex_padded_length(seq_len) // block_size
    extra = nblocks - tiles.shape[2]
    tiles = torch.nn.functional.pad(tiles, (0, 0, 0, extra), value=0)
    count = torch.nn.functional.pad(count, (0, extra), value=0)
    bsz, heads = tiles.shape[:2]
    diagonal = torch.arange(nblocks, device=tiles.device, dtype=torch.int32)
    diagonal = diagonal.view(1, 1, nblocks, 1).expand(bsz, heads, nblocks, 1).contiguous()
    ones = torch.ones(bsz, heads, nblocks, dtype=torch.int32, device=tiles.device)
    if active_heads is not None:
        on = active_heads.to(device=tiles.device, dtype=torch.int32)[None, :, None]
        ones, count = ones * on, count * on
    return _from_kv_blocks(
        (diagonal, ones), (tiles, count), block_size, flex_padded_length(seq_len), _causal
    )
