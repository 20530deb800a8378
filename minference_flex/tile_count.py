"""Count the 64 x 64 tiles the attention kernels compute, against dense causal attention.

    with count_tiles() as tiles:
        model.generate(ids, ...)          # a model patched by minference_flex.compile
    tiles.fraction                        # computed tiles / dense causal tiles

While the context is active, every attention call of a patched model records, per pattern
group, the tiles it computed and the dense causal tiles of the same Sq x Sk rectangle (the
queries are the last Sq of Sk positions; query tile m holds q rows [64m, 64m + 64), and its
dense causal tiles are the key tiles up to and including the one holding its last position:
`causal_tiles`). What counts as computed, from the indices the call actually used:
- vertical-slash: the tiles of the kernel's index (`custom_ops.vertical_slash.head_tiles`),
  or every causal tile where the op falls back to dense (its own decision, `sparse_index`);
- block-sparse: the chosen tiles plus the key tiles holding the query tile's own positions
  (from its first chosen-or-diagonal tile n0 to the tile of its last position: 1 or 2);
- A-shape: the causal 64 x 64 tiles that lie in a block (128 x 128, partial or full) of the
  BlockMask FlexAttention runs; the never-attended upper half of a diagonal block and the
  padding rows are not counted;
- dense calls (short prompts and chunks, decode steps, layers before `starting_layer`):
  all their causal tiles.
A vertical-slash index may read more tiles than dense attention (short prompts, many
offsets), so a fraction can exceed 1. Only the heads whose output a pattern group returns are
counted (a mixed layer's vertical-slash
op that falls back to dense also runs the other heads, whose outputs are dropped), and the
estimation (scores of the last queries, pooled tile scores) is not.

Recording reads device values (host syncs; vertical-slash rebuilds its index to count it) and
runs only inside the context, never in code torch.compile traces (`active`); outside it an
attention call pays one global read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator

import torch

from custom_ops.vertical_slash import head_tiles, sparse_index
from custom_ops.vertical_slash.index import dense_tiles

from .attention import fallback_threshold
from .config import A_SHAPE, BLOCK_SPARSE, VERTICAL_SLASH
from .flex import a_shape_mask_for, block_grid

#: Tile edge of the counts (queries x keys): the kernels' default block size.
TILE = 64
#: Key of the calls that ran dense attention in `TileCount.by_kind`.
DENSE = "dense"


@dataclasses.dataclass
class TileCount:
    """Tiles recorded inside one `count_tiles` context. by_kind: per pattern kind (config
    names, or DENSE) [computed, causal] summed over calls, batch rows and heads."""

    by_kind: dict[str, list[int]] = dataclasses.field(default_factory=dict)

    @property
    def computed(self) -> int:
        return sum(c for c, _ in self.by_kind.values())

    @property
    def causal(self) -> int:
        return sum(d for _, d in self.by_kind.values())

    @property
    def fraction(self) -> float | None:
        """computed / causal over everything recorded; None when nothing was."""
        return self.computed / self.causal if self.causal else None

    def add(self, kind: str, computed: int, causal: int) -> None:
        totals = self.by_kind.setdefault(kind, [0, 0])
        totals[0] += int(computed)
        totals[1] += int(causal)


_active: TileCount | None = None


@contextlib.contextmanager
def count_tiles() -> Iterator[TileCount]:
    """Record the tiles of every attention call of a patched model made inside the block
    (nested contexts: the innermost records)."""
    global _active
    previous, _active = _active, TileCount()
    try:
        yield _active
    finally:
        _active = previous


def active() -> TileCount | None:
    """The count to record into: None outside `count_tiles` and while torch.compile traces."""
    if torch.compiler.is_compiling():  # first: traced code never reads (and guards on) the global
        return None
    return _active


def causal_tiles(q_len: int, kv_len: int, block_size: int = TILE) -> int:
    """Dense causal key tiles of one head for the last q_len of kv_len positions: summed over
    the ceil(q_len / bs) query tiles, the key tiles up to the one holding the tile's last
    position (all but the last query tile end at a multiple of bs after Sk - Sq)."""
    nblocks = math.ceil(q_len / block_size)
    return dense_tiles(nblocks - 1, kv_len - q_len, block_size) + math.ceil(kv_len / block_size)


def _check_tile(block_size: int) -> None:
    if block_size != TILE:
        raise ValueError(f"count_tiles counts {TILE} x {TILE} tiles, but the patterns run {block_size}-tiles; "
                         f"compile the model with block_size={TILE} to count them")


def record_dense(count: TileCount, batch: int, heads: int, q_len: int, kv_len: int) -> None:
    """A dense call: all causal tiles of its batch x heads rectangles."""
    tiles = batch * heads * causal_tiles(q_len, kv_len)
    count.add(DENSE, tiles, tiles)


def record_vertical_slash(
    count: TileCount, q: torch.Tensor, k: torch.Tensor, v_idx: torch.Tensor, s_idx: torch.Tensor,
    heads: tuple[int, ...], block_size: int, dense_fallback: bool,
) -> None:
    """The vertical-slash op's call on q [B, H, Sq, D], k [B, Hkv, Sk, D] with these indices
    (as `vertical_slash_sparse_attention` gets them): its index's tiles of `heads`, or all
    their causal tiles where it falls back to dense."""
    _check_tile(block_size)
    causal = q.shape[0] * len(heads) * causal_tiles(q.shape[2], k.shape[2])
    index = sparse_index(q, k, v_idx, s_idx, block_size, fallback_threshold(dense_fallback))
    computed = causal if index is None else head_tiles(index, block_size)[:, list(heads)].sum().item()
    count.add(VERTICAL_SLASH, computed, causal)


def record_block_sparse(
    count: TileCount, chosen: torch.Tensor, heads: tuple[int, ...], q_len: int, kv_len: int, block_size: int
) -> None:
    """Block-sparse tiles of `heads` from the `count` [B, H, Mq] of chosen tiles that
    `select_block_sparse_tiles` returns: chosen tiles lie below each query tile's first
    own tile n0 = m + (Sk - Sq) // bs, and its own tiles run from n0 to its causal end, so
    they are its causal tiles less n0."""
    _check_tile(block_size)
    nblocks = math.ceil(q_len / block_size)
    shift = (kv_len - q_len) // block_size
    below_own = nblocks * (nblocks - 1) // 2 + nblocks * shift  # sum of n0 over query tiles
    per_head = causal_tiles(q_len, kv_len) - below_own
    rows = chosen.shape[0] * len(heads)
    computed = chosen[:, list(heads)].sum().item() + rows * per_head
    count.add(BLOCK_SPARSE, computed, rows * causal_tiles(q_len, kv_len))


def record_a_shape(
    count: TileCount, q: torch.Tensor, k: torch.Tensor, heads: tuple[int, ...],
    init_num: tuple[int, ...], local_window_num: tuple[int, ...],
) -> None:
    """A-shape tiles of `heads` (budgets per query head, (0, 0) elsewhere, as `a_shape_attend`
    gets them): the causal 64-tiles inside the blocks of its BlockMask."""
    mask, front = a_shape_mask_for(q, k, init_num, local_window_num)
    q_block, kv_block = mask.BLOCK_SIZE
    q_len, kv_len = q.shape[2], k.shape[2]
    device = q.device
    m = torch.arange(math.ceil(q_len / TILE), device=device)
    last_row = torch.clamp((m + 1) * TILE, max=q_len) - 1
    # the mask's row blocks holding the tile's first and last rows (front rows come first)
    first_block, last_block = (front + m * TILE) // q_block, (front + last_row) // q_block
    n = torch.arange(math.ceil(kv_len / TILE), device=device)
    live = block_grid(mask)[:, list(heads)][..., n * TILE // kv_block]  # [B, h, row blocks, key tiles]
    covered = live[:, :, first_block] | live[:, :, last_block]
    causal = n[None, :] <= (kv_len - q_len + last_row)[:, None] // TILE
    computed = (covered & causal).sum().item()
    count.add(A_SHAPE, computed, q.shape[0] * len(heads) * causal_tiles(q_len, kv_len))
