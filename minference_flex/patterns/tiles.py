"""Dense causal tile counts shared by the patterns' `tiles` and by tile counting.

Query tile m holds q rows [64m, 64m + 64) of the last Sq of Sk positions; its dense causal
tiles are the key tiles up to and including the one holding its last position.
"""

from __future__ import annotations

import math

from custom_ops.vertical_slash.index import dense_tiles

#: Tile edge of the counts (queries x keys): the kernels' default block size.
TILE = 64


def causal_tiles(q_len: int, kv_len: int, block_size: int = TILE) -> int:
    """Dense causal key tiles of one head for the last q_len of kv_len positions: summed over
    the ceil(q_len / bs) query tiles, the key tiles up to the one holding the tile's last
    position (all but the last query tile end at a multiple of bs after Sk - Sq)."""
    nblocks = math.ceil(q_len / block_size)
    return dense_tiles(nblocks - 1, kv_len - q_len, block_size) + math.ceil(kv_len / block_size)


def check_tile(block_size: int) -> None:
    """Tile counts are in 64 x 64 tiles; a pattern run at another block size cannot be counted."""
    if block_size != TILE:
        raise ValueError(f"count_tiles counts {TILE} x {TILE} tiles, but the patterns run {block_size}-tiles; "
                         f"compile the model with block_size={TILE} to count them")
