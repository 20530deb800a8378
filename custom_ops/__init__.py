"""Triton kernels registered as torch ops under the namespace `minference_flex`.

One folder per op: `index.py` (device-side work lists), `kernel.py` (Triton), `op.py`
(torch.library registration and fake kernel). Plain PyTorch references of every pattern live
in `minference_flex.ops.reference`.
"""

from . import block_sparse, dense_causal, top_tiles, vertical_slash, vertical_slash_scores

__all__ = ["block_sparse", "dense_causal", "top_tiles", "vertical_slash", "vertical_slash_scores"]
