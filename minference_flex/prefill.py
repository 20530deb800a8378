"""One layer's sparse pre-fill: each query head runs its own pattern, in one call per pattern.

Heads are grouped by pattern. Vertical-slash heads share one estimate and one kernel launch
(per-head budgets); A-shape heads share one FlexAttention call whose mask gives the other
heads no blocks, and so do block-sparse heads. In a layer of one pattern that call is the
whole layer; mixed layers pick each head's output from its group. Inside
`tile_count.count_tiles` each group also records the tiles it computed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import _checks
from . import exact_masks
from .attention import dense_attention, fallback_threshold, vertical_slash_sparse_attention
from .config import A_SHAPE, BLOCK_SPARSE, BLOCK_SPARSE_TOPK, VERTICAL_SLASH, HeadPattern
from .estimate import estimate_vertical_slash, select_block_sparse_tiles
from .flex import a_shape_attend, block_sparse_flex
from .tile_count import active, record_a_shape, record_block_sparse, record_vertical_slash
from custom_ops.vertical_slash import sparse_index


@dataclass(frozen=True)
class LayerPlan:
    """Host-side description of one layer's heads, built once by `minference_flex.compile`.

    kinds: pattern per query head; a, b: its budgets (see `config.HeadPattern`).
    """

    kinds: tuple[str, ...]
    a: tuple[int, ...]
    b: tuple[int, ...]

    @classmethod
    def from_patterns(cls, patterns: list[HeadPattern]) -> LayerPlan:
        return cls(
            tuple(p.kind for p in patterns), tuple(p.a for p in patterns), tuple(p.b for p in patterns)
        )

    def heads_of(self, kind: str) -> tuple[int, ...]:
        return tuple(h for h, k in enumerate(self.kinds) if k == kind)

    def only(self, kind: str) -> tuple[int, ...]:
        """Per head: its `a` budget if the head has `kind`, else 0 (the pair (a, b) likewise)."""
        return tuple(a if k == kind else 0 for k, a in zip(self.kinds, self.a))

    def only_b(self, kind: str) -> tuple[int, ...]:
        return tuple(b if k == kind else 0 for k, b in zip(self.kinds, self.b))


def _head_mask(heads: tuple[int, ...], num_heads: int, device) -> torch.Tensor:
    mask = torch.zeros(num_heads, dtype=torch.bool)
    mask[list(heads)] = True
    return mask.to(device)


def sparse_prefill(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: LayerPlan,
    scale: float,
    last_q: int = 64,
    block_size: int = 64,
    dense_fallback: bool = True,
    exact_masks: bool = False,
) -> torch.Tensor:
    """Causal pre-fill of q [B, H, Sq, D] over k, v [B, Hkv, Sk, D] with each head's pattern;
    the queries are the last Sq of the Sk positions (Sq < Sk: a chunk over a KV cache).

    Returns [B, H, Sq, D]. Budgets larger than the prompt are clamped to it by the estimators.
    exact_masks: attend through each group's exact mask with SDPA instead of its kernel
    (`minference_flex.exact_masks`: same indices, same outputs up to rounding, dense cost).
    """
    if exact_masks:
        return _masked_prefill(q, k, v, plan, scale, last_q, block_size, dense_fallback)
    _checks.check_qkv(q, k, v)  # the FlexAttention patterns below are not the checked public API
    heads = q.shape[1]
    tiles = active()
    outputs: dict[str, torch.Tensor] = {}
    vs_heads = plan.heads_of(VERTICAL_SLASH)
    if vs_heads:
        # non-VS heads get the smallest budgets here and no indices below
        verticals, slashes = list(plan.only(VERTICAL_SLASH)), list(plan.only_b(VERTICAL_SLASH))
        v_idx, s_idx = estimate_vertical_slash(q, k, verticals, slashes, last_q, scale)
        if len(vs_heads) < heads:
            keep = _head_mask(vs_heads, heads, q.device)[None, :, None]
            v_idx, s_idx = torch.where(keep, v_idx, -1), torch.where(keep, s_idx, -1)
        outputs[VERTICAL_SLASH] = vertical_slash_sparse_attention(
            q, k, v, v_idx, s_idx, block_size, scale, dense_fallback
        )
        if tiles is not None:
            record_vertical_slash(tiles, q, k, v_idx, s_idx, vs_heads, block_size, dense_fallback)
    a_shape_heads = plan.heads_of(A_SHAPE)
    if a_shape_heads:
        outputs[A_SHAPE] = a_shape_attend(q, k, v, plan.only(A_SHAPE), plan.only_b(A_SHAPE), scale)
        if tiles is not None:
            record_a_shape(tiles, q, k, a_shape_heads, plan.only(A_SHAPE), plan.only_b(A_SHAPE))
    bs_heads = plan.heads_of(BLOCK_SPARSE)
    if bs_heads:
        chosen, count = select_block_sparse_tiles(q, k, BLOCK_SPARSE_TOPK, block_size)
        on = _head_mask(bs_heads, heads, q.device) if len(bs_heads) < heads else None
        outputs[BLOCK_SPARSE] = block_sparse_flex(q, k, v, chosen, count, block_size, scale, on)
        if tiles is not None:
            record_block_sparse(tiles, count, bs_heads, q.shape[2], k.shape[2], block_size)
    if len(outputs) == 1:
        return next(iter(outputs.values()))
    out = None
    for kind, result in outputs.items():
        if out is None:
            out = result
            continue
        pick = _head_mask(plan.heads_of(kind), heads, q.device)[None, :, None, None]
        out = torch.where(pick, result, out)
    return out


def _masked_prefill(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: LayerPlan, scale: float, last_q: int,
    block_size: int, dense_fallback: bool,
) -> torch.Tensor:
    """`sparse_prefill` with the vertical-slash heads attending through their exact mask
    (`exact_masks`: the same estimate, the op's own dense-fallback decision, the same tile
    record); the other heads run their FlexAttention patterns as always."""
    vs_heads = plan.heads_of(VERTICAL_SLASH)
    # the vertical-slash heads are no group's: the groups below leave them to the masked path
    others = LayerPlan(tuple("masked" if k == VERTICAL_SLASH else k for k in plan.kinds), plan.a, plan.b)
    if len(vs_heads) < len(plan.kinds):
        out = sparse_prefill(q, k, v, others, scale, last_q, block_size, dense_fallback)
    else:
        _checks.check_qkv(q, k, v)
        out = torch.empty_like(q)
    if not vs_heads:
        return out
    q_len, kv_len = q.shape[2], k.shape[2]
    verticals, slashes = list(plan.only(VERTICAL_SLASH)), list(plan.only_b(VERTICAL_SLASH))
    v_idx, s_idx = estimate_vertical_slash(q, k, verticals, slashes, last_q, scale)
    keep = _head_mask(vs_heads, q.shape[1], q.device)[None, :, None]
    v_idx, s_idx = torch.where(keep, v_idx, -1), torch.where(keep, s_idx, -1)
    rows = list(vs_heads)
    if sparse_index(q, k, v_idx, s_idx, block_size, fallback_threshold(dense_fallback)) is None:
        group = q.shape[1] // k.shape[1]
        kv_rows = [h // group for h in rows]  # the op's fallback: dense attention of these heads
        out[:, rows] = dense_attention(q[:, rows], k[:, kv_rows], v[:, kv_rows], scale)
    else:
        mask = exact_masks.vertical_slash_mask(v_idx[:, rows], s_idx[:, rows], q_len, kv_len, block_size)
        out[:, rows] = exact_masks.masked_attention(q, k, v, mask, rows, scale)
    tiles = active()
    if tiles is not None:
        record_vertical_slash(tiles, q, k, v_idx, s_idx, vs_heads, block_size, dense_fallback)
    return out
