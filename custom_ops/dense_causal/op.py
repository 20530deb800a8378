"""`minference_flex::dense_causal_attention`: dense causal attention, GQA-native, with a fake.

At long lengths on CUDA the rows go in chunks: chunk [a, b) is a causal cuDNN call over keys
[a, b) and a non-causal one over keys [0, a), merged by log-sum-exp (`kernel.merge_two_into`).
cuDNN's causal kernel slows down past 64K tokens while its non-causal one does not (H100,
32/8 heads, D=128, bf16: causal 620-630 TFLOP/s at 32K-64K, 517-580 at 128K, 533 at 256K,
501 at 512K; rectangles 600-636), so the chunks run faster than one call on the whole
sequence: 0.93 / 0.87 / 0.83 of its time at 128K / 256K / 512K, and no faster at 32K-64K
(perf/tune_kernels.py --only dense_chunks; H200: 0.95 / 0.86 at 128K / 256K). Elsewhere
(CPU, short prompts, inputs cuDNN does not take) it is one SDPA call.

Queries may be the last Sq of Sk > Sq positions (chunked pre-fill over a KV cache): query i
sits at Sk - Sq + i, causal at the bottom right. On CUDA that is the same pair of cuDNN calls
per row chunk (the rectangle now spans the cached keys too); elsewhere SDPA over row chunks
with an explicit mask of bounded size (`MASK_ELEMENTS`), since SDPA's own `is_causal` aligns
at the top left when Sq != Sk.

Backward (`minference_flex::dense_causal_attention_backward`, registered as the op's autograd):
SDPA's own backward, after recomputing its forward (one causal call for Sq == Sk, else the
masked row chunks; GQA-native: SDPA sums the K/V gradients over each group, nothing is
repeated).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.backends.cuda import SDPAParams, can_use_cudnn_attention

from .._autograd import autograd_inside_op
from .kernel import merge_two_into

#: Rows per chunk: sequences longer than this run in ceil(S / CHUNK_ROWS) balanced chunks.
CHUNK_ROWS = 32768

#: attend(q, k, v, causal, scale) -> (out [B, H, L, D], lse [B, H, L] or [B, H, L, 1]).
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, bool, float], tuple[torch.Tensor, torch.Tensor]]


def chunk_bounds(seq_len: int, chunk_rows: int) -> list[int]:
    """Row bounds [0, b1, ..., seq_len], strictly increasing: at most ceil(seq_len / chunk_rows)
    chunks of one length (seq_len split evenly, rounded up to 128 rows), the last one shorter."""
    parts = max(1, math.ceil(seq_len / chunk_rows))
    step = math.ceil(math.ceil(seq_len / parts) / 128) * 128
    return list(range(0, seq_len, step)) + [seq_len]


#: Largest [rows, keys] boolean mask the SDPA path builds at once (256 MiB).
MASK_ELEMENTS = 1 << 28


def chunked_causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, chunk_rows: int, attend: Attend
) -> torch.Tensor:
    """Causal attention of q [B, H, Sq, D] over k, v [B, Hkv, Sk, D] (query i at position
    Sk - Sq + i) by row chunks (`chunk_bounds` of Sq): chunk [a, b), at positions [c, d) =
    [Sk - Sq + a, Sk - Sq + b), is attend(causal, keys [c, d)) merged with
    attend(non-causal, keys [0, c)). Returns a contiguous [B, H, Sq, D] in q's dtype."""
    q_len, seq_len = q.shape[2], k.shape[2]
    first = seq_len - q_len
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    bounds = chunk_bounds(q_len, chunk_rows)
    for a, b in zip(bounds[:-1], bounds[1:]):
        rows = q[:, :, a:b]
        c, d = first + a, first + b
        square, lse_square = attend(rows, k[:, :, c:d], v[:, :, c:d], True, scale)
        if c == 0:
            out[:, :, :b].copy_(square)
            continue
        before, lse_before = attend(rows, k[:, :, :c], v[:, :, :c], False, scale)
        merge_two_into(out[:, :, a:b], square, lse_square, before, lse_before)
    return out


def masked_sdpa_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Bottom-right causal SDPA of q [B, H, Sq, D] over k, v [B, Hkv, Sk, D] in row chunks
    whose [rows, keys] mask stays under `MASK_ELEMENTS`; contiguous [B, H, Sq, D]."""
    q_len, seq_len = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if q_len == 1:  # a decode step sees every key
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=gqa).contiguous()
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    step = max(1, MASK_ELEMENTS // seq_len)
    keys = torch.arange(seq_len, device=q.device)
    for a in range(0, q_len, step):
        b = min(a + step, q_len)
        last = seq_len - q_len + b  # keys past the chunk's last query are never attended
        pos = torch.arange(seq_len - q_len + a, last, device=q.device)
        mask = keys[None, :last] <= pos[:, None]
        out[:, :, a:b] = torch.nn.functional.scaled_dot_product_attention(
            q[:, :, a:b], k[:, :, :last], v[:, :, :last], attn_mask=mask, scale=scale, enable_gqa=gqa
        )
    return out


def _cudnn_attend(q, k, v, causal: bool, scale: float):
    """cuDNN SDPA with its log-sum-exp; k, v may have fewer heads (GQA)."""
    result = torch.ops.aten._scaled_dot_product_cudnn_attention(
        q, k, v, None, True, 0.0, causal, False, scale=scale
    )
    return result[0], result[1]


def _chunks_apply(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    q_len, seq_len = q.shape[2], k.shape[2]
    if not q.is_cuda or q_len == 1 or (q_len == seq_len <= CHUNK_ROWS):
        return False
    # the check reads the current device's properties: make it q's (layers on other GPUs)
    with torch.cuda.device(q.device):
        return can_use_cudnn_attention(SDPAParams(q, k, v, None, 0.0, True, q.shape[1] != k.shape[1]), False)


def dense_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Dense causal attention of q [B, H, Sq, D] over k, v [B, Hkv, Sk, D], Sq <= Sk (query i
    at position Sk - Sq + i), GQA-native; contiguous [B, H, Sq, D]. Row chunks of cuDNN calls
    where they apply (see the module), else SDPA. The dense fallback of vertical-slash, and
    the body of the op."""
    if _chunks_apply(q, k, v):
        return chunked_causal_attention(q, k, v, scale, CHUNK_ROWS, _cudnn_attend)
    if q.shape[2] != k.shape[2]:
        return masked_sdpa_rows(q, k, v, scale)
    out = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, is_causal=True, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
    )
    return out.contiguous()


@torch.library.custom_op("minference_flex::dense_causal_attention", mutates_args=())
def dense_causal_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """`dense_causal_attention` as a torch op: q [B, H, Sq, D], k, v [B, Hkv, Sk, D] ->
    [B, H, Sq, D]."""
    return dense_causal_attention(q, k, v, scale)


@dense_causal_attention_op.register_fake
def _(q, k, v, scale):
    return q.new_empty(q.shape)


def dense_causal_attention_backward(
    grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dq [B, H, Sq, D], dk, dv [B, Hkv, Sk, D]) of dense causal attention (query i
    at Sk - Sq + i) for the output gradient grad [B, H, Sq, D]: SDPA's forward recomputed
    under autograd, then its backward; contiguous, in the inputs' dtype. Works inside a
    custom op's implementation."""
    with autograd_inside_op():
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        if q.shape[2] == k.shape[2]:
            out = torch.nn.functional.scaled_dot_product_attention(
                *leaves, is_causal=True, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
            )
        else:
            out = masked_sdpa_rows(*leaves, scale)
        grads = torch.autograd.grad(out, leaves, grad)
    return tuple(g.contiguous() for g in grads)


@torch.library.custom_op("minference_flex::dense_causal_attention_backward", mutates_args=())
def dense_causal_attention_backward_op(
    grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`dense_causal_attention_backward` as a torch op: (dq, dk, dv) shaped like (q, k, v)."""
    return dense_causal_attention_backward(grad, q, k, v, scale)


@dense_causal_attention_backward_op.register_fake
def _(grad, q, k, v, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_dense(ctx, inputs, output):
    q, k, v, scale = inputs
    ctx.save_for_backward(q, k, v)
    ctx.scale = scale


def _backward_dense(ctx, grad):
    q, k, v = ctx.saved_tensors
    dq, dk, dv = dense_causal_attention_backward_op(grad, q, k, v, ctx.scale)
    return dq, dk, dv, None


dense_causal_attention_op.register_autograd(_backward_dense, setup_context=_setup_dense)
