"""`minference_flex::dense_causal_attention`: dense causal attention, GQA-native, with a fake.

At long lengths on CUDA the rows go in chunks: chunk [a, b) is a causal cuDNN call over keys
[a, b) and a non-causal one over keys [0, a), merged by log-sum-exp (`kernel.merge_two_into`).
cuDNN's causal kernel slows down past 64K tokens while its non-causal one does not (H100,
32/8 heads, D=128, bf16: causal 620-630 TFLOP/s at 32K-64K, 517-580 at 128K, 533 at 256K,
501 at 512K; rectangles 600-636), so the chunks run faster than one call on the whole
sequence: 0.93 / 0.87 / 0.83 of its time at 128K / 256K / 512K, and no faster at 32K-64K
(perf/tune_kernels.py --only dense_chunks; H200: 0.95 / 0.86 at 128K / 256K). Elsewhere
(CPU, short prompts, inputs cuDNN does not take) it is one SDPA call.

Backward (`minference_flex::dense_causal_attention_backward`, registered as the op's autograd):
SDPA's own backward, after recomputing its forward in one call (GQA-native: SDPA sums the
K/V gradients over each group; nothing is repeated).
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


def chunked_causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, chunk_rows: int, attend: Attend
) -> torch.Tensor:
    """Causal attention of q [B, H, S, D] over k, v [B, Hkv, S, D] by row chunks
    (`chunk_bounds`): chunk [a, b) is attend(causal, keys [a, b)) merged with
    attend(non-causal, keys [0, a)). Returns a contiguous [B, H, S, D] in q's dtype."""
    seq_len = q.shape[2]
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    bounds = chunk_bounds(seq_len, chunk_rows)
    for a, b in zip(bounds[:-1], bounds[1:]):
        rows = q[:, :, a:b]
        square, lse_square = attend(rows, k[:, :, a:b], v[:, :, a:b], True, scale)
        if a == 0:
            out[:, :, :b].copy_(square)
            continue
        before, lse_before = attend(rows, k[:, :, :a], v[:, :, :a], False, scale)
        merge_two_into(out[:, :, a:b], square, lse_square, before, lse_before)
    return out


def _cudnn_attend(q, k, v, causal: bool, scale: float):
    """cuDNN SDPA with its log-sum-exp; k, v may have fewer heads (GQA)."""
    result = torch.ops.aten._scaled_dot_product_cudnn_attention(
        q, k, v, None, True, 0.0, causal, False, scale=scale
    )
    return result[0], result[1]


def _chunks_apply(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    if not q.is_cuda or q.shape[2] <= CHUNK_ROWS:
        return False
    return can_use_cudnn_attention(SDPAParams(q, k, v, None, 0.0, True, q.shape[1] != k.shape[1]), False)


def dense_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Dense causal attention of q [B, H, S, D] over k, v [B, Hkv, S, D], GQA-native;
    contiguous [B, H, S, D]. Row chunks of cuDNN calls where they apply (see the module),
    else one SDPA call. The dense fallback of vertical-slash, and the body of the op."""
    if _chunks_apply(q, k, v):
        return chunked_causal_attention(q, k, v, scale, CHUNK_ROWS, _cudnn_attend)
    out = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, is_causal=True, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
    )
    return out.contiguous()


@torch.library.custom_op("minference_flex::dense_causal_attention", mutates_args=())
def dense_causal_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """`dense_causal_attention` as a torch op: q [B, H, S, D], k, v [B, Hkv, S, D] -> [B, H, S, D]."""
    return dense_causal_attention(q, k, v, scale)


@dense_causal_attention_op.register_fake
def _(q, k, v, scale):
    return q.new_empty(q.shape)


def dense_causal_attention_backward(
    grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dq [B, H, S, D], dk, dv [B, Hkv, S, D]) of dense causal attention for the
    output gradient grad [B, H, S, D]: SDPA's forward recomputed under autograd, then its
    backward; contiguous, in the inputs' dtype. Works inside a custom op's implementation."""
    with autograd_inside_op():
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        out = torch.nn.functional.scaled_dot_product_attention(
            *leaves, is_causal=True, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
        )
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
