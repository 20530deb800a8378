"""Attention recall and kernel cost of sparse patterns, for the pattern search.

Recall of a head under a pattern: the mean, over sampled query rows, of the dense causal
attention probability (softmax in fp32 of q k^T * scale) that falls on keys the pattern's mask
keeps. The masks follow the documented kernel semantics and use the indices of the real
estimators (`estimate_vertical_slash`, `select_block_sparse_tiles`), so a head's recall is what
the sparse kernels would keep on this input. Nothing S x S is built: the dense statistics exist
only for the sampled rows, one KV group and one key chunk at a time (online softmax).

Cost of a head under a pattern (`candidate_scores`): the fraction of dense causal bs x bs tiles
its kernel computes. Vertical-slash: data-dependent and kernel-exact, from the index the kernel
would run on this input (`vertical_slash_cost`, the same estimated indices the recall uses);
A-shape and block-sparse: `pattern_cost`, which depends only on the budgets and the length.
`pattern_cost` is also the analytical estimate for vertical-slash when no data is at hand.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from custom_ops.vertical_slash import build_vertical_slash_index, head_fractions

from minference_flex.ops import checks
from minference_flex.ops.attention import DENSE_FALLBACK_FRACTION
from minference_flex.patterns.base import get_pattern, head_mask, registered
from minference_flex.patterns.config import A_SHAPE, VERTICAL_SLASH, HeadPattern
from minference_flex.patterns.prefill import LayerPlan

#: Elements of one [group heads x sampled rows x key chunk] fp32 score block (128 MiB).
_CHUNK_ELEMENTS = 2**25


def sample_query_tiles(seq_len: int, block_size: int = 64, num_tiles: int = 32) -> list[int]:
    """Query tiles whose rows the recall is measured on, ascending.

    All ceil(S / block_size) tiles if there are at most `num_tiles`; otherwise `num_tiles`
    tiles evenly spaced with stride M / num_tiles counted back from the last (possibly partial)
    tile, which is always included. Deterministic.
    """
    checks.check_nonnegative_int("seq_len", seq_len, minimum=1)
    checks.check_nonnegative_int("block_size", block_size, minimum=1)
    checks.check_nonnegative_int("num_tiles", num_tiles, minimum=1)
    nblocks = math.ceil(seq_len / block_size)
    if nblocks <= num_tiles:
        return list(range(nblocks))
    return sorted(nblocks - 1 - (i * nblocks) // num_tiles for i in range(num_tiles))


@dataclass
class _Rows:
    """The sampled query rows: positions [R], index of their tile in `tiles` [R], tile ends [R]."""

    tiles: list[int]
    pos: torch.Tensor
    tile_slot: torch.Tensor
    end: torch.Tensor


def _sampled_rows(seq_len: int, block_size: int, num_tiles: int, device) -> _Rows:
    tiles = sample_query_tiles(seq_len, block_size, num_tiles)
    pos, slot = [], []
    for t_slot, m in enumerate(tiles):
        rows = torch.arange(m * block_size, min((m + 1) * block_size, seq_len))
        pos.append(rows)
        slot.append(torch.full_like(rows, t_slot))
    pos_t, slot_t = torch.cat(pos).to(device), torch.cat(slot).to(device)
    end = (torch.tensor(tiles, device=device)[slot_t] + 1) * block_size
    return _Rows(tiles, pos_t, slot_t, end)


@dataclass
class _SlotMasks:
    """One candidate slot (a pattern per query head), compactly, for the sampled tiles.

    Heads of another kind are empty in each part, so the slot's mask is the union of parts:
    a_init, a_local [H] (A-shape; 0 elsewhere); vs_cols [B, H, S] column keys, vs_cover
    [B, H, M*bs + 1] distances u = e - j covered by the bands, vs_clamped [B, H, T] tiles with a
    band clamped to keys [0, bs); tile_keep [B, H, T, M] kept key tiles of the patterns that keep
    whole tiles (block-sparse and any registered one with `tile_keep`; diagonal included).
    """

    a_init: torch.Tensor | None = None
    a_local: torch.Tensor | None = None
    vs_cols: torch.Tensor | None = None
    vs_cover: torch.Tensor | None = None
    vs_clamped: torch.Tensor | None = None
    tile_keep: torch.Tensor | None = None


def _vertical_slash_parts(
    v_idx: torch.Tensor, s_idx: torch.Tensor, seq_len: int, block_size: int, tiles: list[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Columns [B, H, S], band cover in distance space [B, H, M*bs + 1], clamped [B, H, T].

    Offset s covers, for tile end e, keys [e-s-bs, e-s) when e - s >= bs, i.e. distances
    u = e - j in [s+1, s+bs]; when e - bs < s < e the band is clamped to keys [0, bs) (the
    distance marks then only reach keys inside [0, bs), a subset); offsets s >= e would need
    keys j < 0 and so cover nothing.
    """
    lead = v_idx.shape[:-1]
    device = v_idx.device
    nblocks = math.ceil(seq_len / block_size)
    v_ok = (v_idx >= 0) & (v_idx < seq_len)
    cols = torch.zeros(*lead, seq_len + 1, dtype=torch.bool, device=device)
    cols.scatter_(-1, torch.where(v_ok, v_idx, seq_len).long(), True)

    s_ok = (s_idx >= 0) & (s_idx < seq_len)
    span = nblocks * block_size + 1
    trash = span + block_size + 1
    delta = torch.zeros(*lead, trash + 1, dtype=torch.int32, device=device)
    ones = s_ok.int()
    delta.scatter_add_(-1, torch.where(s_ok, s_idx + 1, trash).long(), ones)
    delta.scatter_add_(-1, torch.where(s_ok, s_idx + block_size + 1, trash).long(), -ones)
    cover = torch.cumsum(delta, -1)[..., :span] > 0

    occupied = torch.zeros(*lead, seq_len + 1, dtype=torch.int32, device=device)
    occupied.scatter_(-1, torch.where(s_ok, s_idx, seq_len).long(), 1)
    below = torch.nn.functional.pad(torch.cumsum(occupied[..., :seq_len], -1), (1, 0))  # offsets < x
    ends = (torch.tensor(tiles, device=device) + 1) * block_size
    hi = below[..., ends.clamp(max=seq_len)]
    lo = below[..., (ends - block_size + 1).clamp(max=seq_len)]
    return cols[..., :seq_len], cover, hi > lo


def vertical_slash_cost(
    v_idx: torch.Tensor,
    s_idx: torch.Tensor,
    seq_len: int,
    block_size: int = 64,
    dense_above: float = DENSE_FALLBACK_FRACTION,
) -> torch.Tensor:
    """Kernel-exact cost of vertical-slash heads on their real indices: [B, H] float32.

    v_idx [B, H, NV], s_idx [B, H, NS] as `estimate_vertical_slash` returns them (values outside
    [0, S) ignored). The kernel's index is built with `build_vertical_slash_index`, and entry
    [b, h] is `head_fractions` of head (b, h): the bs x bs key tiles the kernel runs for
    that head (band chunks + column chunks + clamped tiles, summed over its query tiles) over the
    M(M+1)/2 dense causal tiles. It can exceed 1 (columns are chunked on top of the bands, and
    partial chunks count whole). Above `dense_above` (`DENSE_FALLBACK_FRACTION`)
    the entry is 1.0, since the op would run dense attention instead.

    The op decides that fallback once per call, on the mean fraction over every head of the
    call (heads of other patterns count 0), so this per-head rule is the head's own view of it.
    """
    if v_idx.dim() != 3 or s_idx.dim() != 3 or v_idx.shape[:2] != s_idx.shape[:2]:
        raise ValueError(
            f"v_idx and s_idx must be [B, H, N] with the same B, H, got {tuple(v_idx.shape)} and {tuple(s_idx.shape)}"
        )
    checks.check_nonnegative_int("seq_len", seq_len, minimum=1)
    checks.check_nonnegative_int("block_size", block_size, minimum=1)
    index = build_vertical_slash_index(v_idx, s_idx, seq_len, block_size)
    per_head = head_fractions(index, block_size)
    return torch.where(per_head > dense_above, 1.0, per_head).float()


class CandidateScores(NamedTuple):
    """`candidate_scores`' result: recall and cost, each [B, H, C] float32 (cost None when
    not asked for)."""

    recall: torch.Tensor
    cost: torch.Tensor | None


def _build_slots(
    q: torch.Tensor,
    k: torch.Tensor,
    head_patterns: Sequence[Sequence[HeadPattern]],
    scale: float,
    rows: _Rows,
    block_size: int,
    last_q: int,
    cost: torch.Tensor | None = None,
) -> list[_SlotMasks]:
    """One `_SlotMasks` per candidate slot. With `cost` ([B, H, C]), also fill in each head's
    cost: vertical-slash heads from the slot's estimated indices (`vertical_slash_cost`), the
    others from `pattern_cost`. Each slot's groups get what `sparse_prefill` would give them
    (`LayerPlan.group`), so the indices are the ones the patterns would run on."""
    heads, seq_len = q.shape[1], q.shape[2]
    tile_keeps: dict[tuple, torch.Tensor] = {}
    slots = []
    analytical: dict[HeadPattern, float] = {}
    for c in range(len(head_patterns[0])):
        pats = [head_patterns[h][c] for h in range(heads)]
        plan = LayerPlan.from_patterns(pats)
        slot = _SlotMasks()
        if cost is not None:
            for h, p in enumerate(pats):
                if p.kind != VERTICAL_SLASH:
                    if p not in analytical:
                        analytical[p] = pattern_cost(p, seq_len, block_size)
                    cost[:, h, c] = analytical[p]
        for kind in dict.fromkeys(plan.kinds):
            group = plan.group(kind, scale, last_q, block_size, dense_fallback=True, exact_masks=False)
            on = head_mask(group.heads, heads, q.device)
            if kind == A_SHAPE:
                slot.a_init = torch.tensor(group.a, device=q.device)
                slot.a_local = torch.tensor(group.b, device=q.device)
            elif kind == VERTICAL_SLASH:
                v_idx, s_idx = get_pattern(VERTICAL_SLASH).estimate(q, k, group)
                if cost is not None:
                    vs_cost = vertical_slash_cost(v_idx, s_idx, seq_len, block_size)
                    cost[:, :, c] = torch.where(on[None], vs_cost, cost[:, :, c])
                slot.vs_cols, slot.vs_cover, slot.vs_clamped = _vertical_slash_parts(
                    v_idx, s_idx, seq_len, block_size, rows.tiles
                )
            else:  # patterns that keep whole tiles
                key = (kind, group.a, group.b)
                if key not in tile_keeps:  # e.g. block-sparse: one selection serves every slot
                    tile_keeps[key] = get_pattern(kind).tile_keep(q, k, group, rows.tiles)
                keep = tile_keeps[key] & on[None, :, None, None]
                slot.tile_keep = keep if slot.tile_keep is None else slot.tile_keep | keep
        slots.append(slot)
    return slots


def _chunk_mask(
    slot: _SlotMasks, b: int, heads: slice, rows: _Rows, start: int, keys: torch.Tensor, block_size: int,
    gap: torch.Tensor,
) -> torch.Tensor:
    """[G, R, C] bool: the slot's keep mask for query heads `heads`, sampled rows, chunk `keys`
    (gap [R, C] = row position - key; causality is left to the scores)."""
    mask = None

    def union(part: torch.Tensor) -> None:
        nonlocal mask
        mask = part if mask is None else mask | part

    if slot.a_init is not None:
        init = slot.a_init[heads][:, None, None]
        local = slot.a_local[heads][:, None, None]
        union((keys[None, None, :] < init) | (gap[None] < local))
    if slot.vs_cols is not None:
        cover = slot.vs_cover[b, heads]
        # u = e - j; keys past the row (gap < 0) are masked by causality anyway
        dist = (gap + (rows.end - rows.pos)[:, None]).clamp(0, cover.shape[-1] - 1)
        union(slot.vs_cols[b, heads][:, None, start : start + keys.shape[0]] | cover[:, dist])
        clamped = slot.vs_clamped[b, heads][:, rows.tile_slot]
        union(clamped[:, :, None] & (keys < block_size)[None, None, :])
    if slot.tile_keep is not None:
        keep = slot.tile_keep[b, heads][:, rows.tile_slot]
        union(keep.index_select(-1, keys // block_size))
    return mask


def candidate_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    head_patterns: Sequence[Sequence[HeadPattern]],
    scale: float | None = None,
    *,
    block_size: int = 64,
    num_tiles: int = 32,
    last_q: int = 64,
    with_cost: bool = True,
) -> CandidateScores:
    """Recall and kernel cost of several candidate patterns per head, each [B, H, C] float32.

    Args:
        q: [B, H, S, D]; k: [B, Hkv, S, D] (dtypes as the estimators take them).
        head_patterns: H sequences of C HeadPatterns; slot c of head h is scored for head h.
        scale: softmax scale, default 1/sqrt(D).
        block_size, last_q: as the kernels and estimators use them (block-sparse heads keep
            the registered pattern's `topk` tiles, MInference's 100).
        num_tiles: query tiles sampled (`sample_query_tiles`).
        with_cost: also compute the costs (builds each vertical-slash candidate's kernel index).

    recall[b, h, c]: the mean over the sampled rows i of sum_{j in mask_c(i)} p(i, j), p the
    dense causal softmax in fp32. Work: one [G, R, chunk] score block at a time (G query heads
    of one KV head, R sampled rows), accumulated with an online softmax over key chunks.

    cost[b, h, c]: the fraction of dense causal bs x bs tiles the kernel computes for head h
    under its slot-c pattern. Vertical-slash: `vertical_slash_cost` of the very indices the
    recall masks use (estimated once), so per head and input, kernel-exact, and 1.0 above
    `DENSE_FALLBACK_FRACTION`. A-shape and block-sparse: `pattern_cost` (the same for every
    head and input).
    """
    checks.check_qkv(q, k, k)
    bsz, heads, seq_len, _ = q.shape
    kv_heads = k.shape[1]
    group = heads // kv_heads
    checks.check_block_size(block_size)
    checks.check_nonnegative_int("num_tiles", num_tiles, minimum=1)
    checks.check_nonnegative_int("last_q", last_q, minimum=1)
    if len(head_patterns) != heads:
        raise ValueError(f"head_patterns must have one entry per query head ({heads}), got {len(head_patterns)}")
    widths = {len(p) for p in head_patterns}
    if len(widths) != 1 or 0 in widths:
        raise ValueError(f"every head needs the same number (>= 1) of candidate patterns, got {sorted(widths)}")
    for h, pats in enumerate(head_patterns):
        for c, p in enumerate(pats):
            if not isinstance(p, HeadPattern) or p.kind not in registered():
                raise TypeError(f"head_patterns[{h}][{c}] must be a HeadPattern with kind in {registered()}, got {p!r}")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    ncand = len(head_patterns[0])
    rows = _sampled_rows(seq_len, block_size, num_tiles, q.device)
    cost = torch.zeros(bsz, heads, ncand, dtype=torch.float32, device=q.device) if with_cost else None
    slots = _build_slots(q, k, head_patterns, scale, rows, block_size, last_q, cost)
    nrows = rows.pos.shape[0]
    chunk = max(block_size, _CHUNK_ELEMENTS // (group * nrows))
    out = torch.empty(bsz, heads, ncand, dtype=torch.float32, device=q.device)
    for b in range(bsz):
        for g in range(kv_heads):
            hs = slice(g * group, (g + 1) * group)
            q_rows = q[b, hs][:, rows.pos].float() * scale  # [G, R, D]
            run_max = torch.full((group, nrows), float("-inf"), device=q.device)
            total = torch.zeros(group, nrows, device=q.device)
            inside = torch.zeros(ncand, group, nrows, device=q.device)
            for start in range(0, seq_len, chunk):
                keys = torch.arange(start, min(start + chunk, seq_len), device=q.device)
                scores = q_rows @ k[b, g, start : start + chunk].float().T
                scores.masked_fill_(keys[None, None, :] > rows.pos[None, :, None], float("-inf"))
                # every row attends key 0 (first chunk), so run_max is finite from then on
                new_max = torch.maximum(run_max, scores.amax(-1))
                alpha = torch.exp(run_max - new_max)
                probs = torch.exp(scores - new_max[..., None])
                total = total * alpha + probs.sum(-1)
                gap = rows.pos[:, None] - keys[None, :]
                for c, slot in enumerate(slots):
                    kept = _chunk_mask(slot, b, hs, rows, start, keys, block_size, gap)
                    inside[c] = inside[c] * alpha + (probs * kept).sum(-1)
                run_max = new_max
            out[b, hs] = (inside / total).mean(-1).T
    return CandidateScores(out, cost)


def attention_recall(
    q: torch.Tensor,
    k: torch.Tensor,
    patterns: list[HeadPattern],
    scale: float,
    *,
    block_size: int = 64,
    num_tiles: int = 32,
    last_q: int = 64,
) -> torch.Tensor:
    """Attention recall of each query head's pattern: [B, H] float32 in [0, 1].

    q [B, H, S, D], k [B, Hkv, S, D]; patterns: one HeadPattern per query head (MInference's
    config row). Recall = mean over the sampled query rows (`sample_query_tiles`) of the dense
    causal attention probability (fp32 softmax of q k^T * scale) on the keys the head's sparse
    kernel computes, with the real estimators' indices (vertical-slash from the last `last_q`
    queries, block-sparse its top `topk` tiles). K/V are never repeated for GQA and no
    S x S tensor is built.
    """
    if not isinstance(patterns, (list, tuple)):
        raise TypeError(f"patterns must be a list of HeadPattern (one per query head), got {type(patterns).__name__}")
    scores = candidate_scores(
        q, k, [[p] for p in patterns], scale, block_size=block_size, num_tiles=num_tiles, last_q=last_q,
        with_cost=False,
    )
    return scores.recall[..., 0]


def pattern_cost(pattern: HeadPattern, seq_len: int, block_size: int = 64) -> float:
    """Analytical kernel cost: the pattern's bs x bs tiles over the M(M+1)/2 dense causal tiles,
    from the budgets and the length alone (each pattern's `cost`: exact for A-shape, an upper
    bound for block-sparse, an estimate for random input for vertical-slash, where
    `vertical_slash_cost` gives the kernel-exact figure from q and k)."""
    if not isinstance(pattern, HeadPattern) or pattern.kind not in registered():
        raise TypeError(f"pattern must be a HeadPattern with kind in {registered()}, got {pattern!r}")
    checks.check_nonnegative_int("seq_len", seq_len, minimum=1)
    checks.check_nonnegative_int("block_size", block_size, minimum=1)
    return get_pattern(pattern.kind).cost(pattern.a, pattern.b, seq_len, block_size)
