"""Debug: where does block-sparse on CUDA differ from the float64 reference?"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import minference_flex as mf  # noqa: E402
from minference_flex import reference  # noqa: E402
from minference_flex.estimate import select_block_sparse_tiles  # noqa: E402
from minference_flex.flex import block_sparse_block_mask  # noqa: E402

for shape, dtype in [((1, 4, 1, 1000, 128), torch.bfloat16), ((1, 4, 1, 1024, 128), torch.bfloat16),
                     ((1, 4, 4, 1000, 128), torch.bfloat16), ((1, 4, 1, 1000, 128), torch.float16)]:
    b, h, hk, s, d = shape
    q = torch.randn(b, h, s, d, device="cuda").to(dtype)
    k = torch.randn(b, hk, s, d, device="cuda").to(dtype)
    v = torch.randn(b, hk, s, d, device="cuda").to(dtype)
    tiles, count = select_block_sparse_tiles(q, k, 5, 64)
    bm = block_sparse_block_mask(tiles, count, s, 64)
    nb = (s + 63) // 64
    dense_bm = torch.zeros(b, h, nb, nb + 1, dtype=torch.bool, device="cuda")
    w = tiles.shape[-1]
    cols = torch.where(torch.arange(w, device="cuda") < count[..., None], tiles.long(), nb)
    dense_bm.scatter_(-1, cols, True)
    dense_bm = dense_bm[..., :nb] | torch.eye(nb, dtype=torch.bool, device="cuda")
    ref_mask = reference.block_sparse_mask(q, k, 5)
    out = mf.block_sparse_attention(q, k, v, 5)
    ref = reference.masked_attention(q, k, v, ref_mask)
    elem_mask = dense_bm.repeat_interleave(64, -1).repeat_interleave(64, -2)[..., :s, :s] & reference.causal_mask(s, "cuda")
    via_bm = reference.masked_attention(q, k, v, elem_mask)
    err_rows = (out.double() - ref).abs().amax(-1)
    print(shape, dtype, "max err vs ref", err_rows.max().item(), "blockmask==ref mask:", bool((elem_mask == ref_mask).all()),
          "err vs blockmask ref", (out.double() - via_bm).abs().max().item())
    bad = (err_rows > 0.05).nonzero()
    print("  bad rows (first 10):", bad[:10].tolist(), "count", len(bad))
    print("  tiles[0,0,:4]", tiles[0, 0, :4].tolist(), "count", count[0, 0, :8].tolist())
    print("  kv_num", bm.kv_num_blocks[0, 0, :8].tolist(), "full_num", bm.full_kv_num_blocks[0, 0, :8].tolist())
