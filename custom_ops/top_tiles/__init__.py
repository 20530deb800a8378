"""Per-row top-k of block-sparse tile scores, compacted in ascending tile order."""

from .op import top_tiles, top_tiles_op

__all__ = ["top_tiles", "top_tiles_op"]
