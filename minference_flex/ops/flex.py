"""FlexAttention calls and BlockMasks built on the device from block indices.

Masks are built with `BlockMask.from_kv_blocks` from index tensors (full blocks apart from
partial ones, so only partial blocks pay for mask_mod), never by evaluating a mask_mod over
the S x S grid. mask_mod functions read their parameters from captured tensors, so new values
never recompile. Masks are built at H = number of query heads (FlexAttention maps query head
h to mask head h % H_mask).

Block-sparse attention on CUDA runs in passes over ranges of key tiles, merged by log-sum-exp,
once one kv head's K and V outgrow L2 (`block_sparse_flex`, `KEY_SPLIT_BYTES`).

Queries may be the last Sq of Sk key positions (chunked pre-fill over a KV cache): masks are
[Sq, Sk] grids whose query blocks sit at absolute positions, and mask_mods add the position
of the mask's first query row, held in a tensor so that each chunk reuses the compiled kernel.

Gradients (`flex_attend` when q, k or v require grad and autograd records):
- on CUDA, FlexAttention's own backward through the same BlockMask, in one pass. Its backward
  walks the mask by query blocks too, so grad-path masks are built with `for_backward=True`: the
  q-direction indices, with the kv index width padded to the number of KV blocks (compact
  widths crash the q-direction transpose up to torch 2.13, pytorch#153344). Inductor's
  backward template takes only masks of 128 x 128 blocks at head_dim 64-128 on H100 (its one
  default config there has 128-wide tiles, and configs a mask's blocks don't divide are
  dropped; torch 2.11-2.13), so block-sparse attention, whose tiles are 64 x 64, trains
  through its own Triton op instead (`custom_ops.block_sparse`); the forward's tuned kernel
  options apply to the forward only (`fwd_` prefix).
- on CPU, where FlexAttention has no backward, SDPA with the boolean [Sq, Sk] mask the
  BlockMask describes (its blocks and mask_mod): exact and differentiable, but Sq x Sk
  memory, so meant for tests and short prompts.
"""

from __future__ import annotations

import functools
import math
import os
import types

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from custom_ops._autograd import needs_grad
from custom_ops.block_sparse import block_sparse_attention_with_grad

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


def _nonfinite_rows(x: torch.Tensor) -> torch.Tensor:
    """[..., 1] bool: the rows of x [..., D] holding a NaN or an infinity."""
    return ~torch.isfinite(x.float().sum(-1, keepdim=True))


def _poison_values(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """v with NaN rows where k's row is not finite: FlexAttention drops a NaN score (no
    output turns NaN), while a NaN value reaches every row that weighs it, as in SDPA."""
    return torch.where(_nonfinite_rows(k), float("nan"), v)


def _flex_on_blocks(q, k, v, block_mask, scale, enable_gqa, kernel_options):
    if q.dim() == 5:
        q, k, v = (t.flatten(2, 3) for t in (q, k, v))
    if not q.is_cuda:  # Inductor's CPU template fuses neither: `flex_attend` does both there
        return flex_attention(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=enable_gqa,
                              kernel_options=kernel_options)
    out = flex_attention(
        q,
        k,
        _poison_values(k, v),
        block_mask=block_mask,
        scale=scale,
        enable_gqa=enable_gqa,
        kernel_options=kernel_options,
    )
    return _poison_rows(q, out)


def _poison_rows(q: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out with NaN rows where q's row is not finite: FlexAttention returns 0 for a query row
    of NaN, SDPA returns NaN, which shows the upstream fault."""
    return torch.where(_nonfinite_rows(q), float("nan"), out)


# Per device: masks are built on q's device and cached with the device in their key, and each
# device compiles its own copy of the flex functions, so a model spread over several GPUs by a
# device map does not share one recompile budget between them.
def per_device_copy(fn, device: torch.device, tag: str = ""):
    """`fn` with a code object of its own for `device` (and `tag`). Dynamo keeps its compiled
    variants and its recompile budget (`recompile_limit`, 8 by default) per code object,
    whatever wraps it; a model whose layers sit on several devices, or whose patterns use
    several mask_mods (each a guard on its code object), would otherwise spend one budget on
    all of them, and past it FlexAttention runs eagerly (S x S scores)."""
    device = torch.device(device)
    suffix = f"{device.type}{device.index if device.index is not None else ''}{'_' + tag if tag else ''}"
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{suffix}")
    copy = types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)
    return functools.update_wrapper(copy, fn)


@functools.cache
def _compiled_flex(device: torch.device = torch.device("cuda", 0), mask_kind: str = ""):
    """`_flex_on_blocks` compiled for the tensors of `device` and one kind of mask_mod
    (`_mask_kind`): Dynamo guards on the mask_mod's code, so A-shape and block-sparse heads
    sharing one compiled function would take turns evicting each other's variants; apart,
    only lengths (dynamic after the first change), dtypes and head shapes vary in each."""
    return torch.compile(per_device_copy(_flex_on_blocks, device, mask_kind))


def _mask_kind(block_mask: BlockMask) -> str:
    """A name for the code of a BlockMask's mask_mod (what Dynamo guards on)."""
    code = getattr(getattr(block_mask, "mask_mod", None), "__code__", None)
    return f"{code.co_name}{code.co_firstlineno}" if code is not None else ""


def _run_compiled(fn, *args):
    """`fn(*args)` for a function of `_compiled_flex*`, refusing to run it eagerly: eager
    FlexAttention applies only the mask_mod and ignores the BlockMask's block lists, so a
    block-sparse mask (whose mask_mod is causal) would give dense causal attention, and every
    mask would materialise S x S scores."""
    dynamo = torch._dynamo.config
    if dynamo.disable or os.environ.get("TORCHDYNAMO_DISABLE", "") == "1":
        raise RuntimeError("minference_flex: A-shape and block-sparse run FlexAttention compiled, and "
                           "torch.compile is off (TORCHDYNAMO_DISABLE=1, TORCH_COMPILE_DISABLE=1 or "
                           "torch._dynamo.config.disable); turn it back on, or use vertical-slash "
                           "patterns, whose Triton kernels need no compile")
    try:
        # past the recompile limit Dynamo would run `fn` eagerly: raise instead
        with dynamo.patch(fail_on_recompile_limit_hit=True, suppress_errors=False):
            return fn(*args)
    except torch._dynamo.exc.FailOnRecompileLimitHit as error:
        raise RuntimeError(
            f"minference_flex: FlexAttention reached torch._dynamo's recompile limit "
            f"({dynamo.recompile_limit} variants: one per dtype, head_dim, GQA ratio and mask block "
            f"size on a device) and would run eagerly, without its block sparsity; raise it, e.g. "
            f"torch._dynamo.config.recompile_limit = 64"
        ) from error


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
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_mask: BlockMask | list[BlockMask],
    scale: float,
) -> torch.Tensor:
    """FlexAttention of q [B, H, Sq, D] over k, v [B, Hkv, Sk, D] with `block_mask`;
    [B, H, Sq, D]. A query or key row holding NaN or inf turns every row that attends it NaN
    (except on CPU inside a caller's torch.compile region, where Inductor's CPU template
    takes neither step: NaN queries give 0 there).

    `block_mask` is built for the grid [flex_padded_length(Sq), flex_padded_length(Sk)], or
    is the list of passes of
    `block_sparse_key_split_masks` (CUDA only: Inductor's CPU template returns no log-sum-exp),
    run one by one and merged by log-sum-exp. Compiled by Inductor (eager flex would
    materialise S x S scores); inside a caller's torch.compile region it is traced instead.
    K and V are contiguous because FlexAttention computes KV offsets in int32 up to 2.13.

    When q, k or v require grad (`needs_grad`): one BlockMask; on CUDA it must carry its
    q-direction indices (built with `for_backward=True`) and FlexAttention differentiates through
    it; on CPU `masked_attention_from_block_mask` runs instead.
    """
    masks = [block_mask] if isinstance(block_mask, BlockMask) else list(block_mask)
    if needs_grad(q, k, v):
        if len(masks) > 1:
            raise ValueError("flex_attend: gradients need one BlockMask, got several key-range passes; "
                             "build block-sparse masks with parts=1 for training")
        if not q.is_cuda:
            return masked_attention_from_block_mask(q, k, v, masks[0], scale)
        if masks[0].q_indices is None:
            raise ValueError("flex_attend: FlexAttention's backward needs the mask's q-direction indices; "
                             "build the BlockMask with for_backward=True")
    if len(masks) > 1 and not q.is_cuda:
        raise ValueError("flex_attend: several key-range passes need a CUDA device (Inductor's CPU "
                         "FlexAttention returns no log-sum-exp); pass one BlockMask on CPU")
    q_len = q.shape[2]
    enable_gqa = q.shape[1] != k.shape[1]
    options = _kernel_options(q, masks[0])
    if options is not None and needs_grad(q, k, v):  # tuned for the forward: Inductor's defaults for the backward
        options = {f"fwd_{name}": value for name, value in options.items()}
    q = _pad_rows(q, flex_padded_length(q_len))
    k, v = (_pad_rows(t, flex_padded_length(k.shape[2])) for t in (k, v))
    if q.is_cuda:  # Inductor's CPU flex template reads the sizes of the unviewed buffer
        q, k, v = (t.contiguous().unflatten(2, (-1, FLEX_ALIGN)) for t in (q, k, v))
    else:  # one layout for every caller: Dynamo guards on strides, and each layout would recompile
        q, k, v = (t.contiguous() for t in (q, k, v))
    compiling = torch.compiler.is_compiling()
    if not q.is_cuda and not compiling:
        v = _poison_values(k, v)
    if len(masks) == 1:
        args = (q, k, v, masks[0], scale, enable_gqa, options)
        out = _flex_on_blocks(*args) if compiling else _run_compiled(_compiled_flex(q.device, _mask_kind(masks[0])), *args)
    else:
        args = (q, k, v, masks, scale, enable_gqa, options)
        out = _flex_key_split(*args) if compiling else _run_compiled(_compiled_flex_key_split(q.device), *args)
    if not q.is_cuda and not compiling:
        out = _poison_rows(q, out)
    return out[:, :, :q_len]


def block_grid(block_mask: BlockMask) -> torch.Tensor:
    """[B, H, Mq, Mk] bool: the blocks (partial or full) of `block_mask` over its whole grid,
    Mk = ceil(kv_len / kv block). `BlockMask.to_dense` is only Mk wide when the index lists
    span the grid; on CUDA ours are compact (as wide as a row's most blocks)."""
    kv_blocks = math.ceil(block_mask.seq_lengths[1] / block_mask.BLOCK_SIZE[1])
    grid = None
    for count, indices in ((block_mask.kv_num_blocks, block_mask.kv_indices),
                           (block_mask.full_kv_num_blocks, block_mask.full_kv_indices)):
        if count is None:
            continue
        listed = torch.arange(indices.shape[-1], device=indices.device) < count[..., None]
        # unlisted slots write to a spare column, dropped below
        target = torch.where(listed, indices.long(), kv_blocks)
        dense = torch.zeros(*indices.shape[:-1], kv_blocks + 1, dtype=torch.bool, device=indices.device)
        dense = dense.scatter(-1, target, True)[..., :kv_blocks]
        grid = dense if grid is None else grid | dense
    return grid


def block_mask_to_bool(block_mask: BlockMask, q_len: int, kv_len: int) -> torch.Tensor:
    """[B, H, q_len, kv_len] bool: what `block_mask` lets the query in grid row i attend (its
    blocks, partial and full, at token level, and mask_mod evaluated on them); q_len, kv_len
    at most its grid's lengths."""
    bq, bkv = block_mask.BLOCK_SIZE
    blocks = block_grid(block_mask)
    device = blocks.device
    allowed = blocks.repeat_interleave(bq, -2)[..., :q_len, :].repeat_interleave(bkv, -1)[..., :kv_len]
    b = torch.arange(blocks.shape[0], device=device).view(-1, 1, 1, 1)
    h = torch.arange(blocks.shape[1], device=device).view(1, -1, 1, 1)
    q_idx = torch.arange(q_len, device=device).view(1, 1, -1, 1)
    kv_idx = torch.arange(kv_len, device=device).view(1, 1, 1, -1)
    # mask_mod holds on every pair of a full block, so applying it everywhere changes nothing there
    return allowed & block_mask.mask_mod(b, h, q_idx, kv_idx)


def masked_attention_from_block_mask(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask, scale: float
) -> torch.Tensor:
    """What FlexAttention computes with `block_mask` (one built as `flex_attend` takes it), by
    SDPA with its boolean mask (`block_mask_to_bool`): differentiable on any device, Sq x Sk
    memory. q [B, H, Sq, D], k, v [B, Hkv, Sk, D]; [B, H, Sq, D]; rows with no key give 0."""
    allowed = block_mask_to_bool(block_mask, q.shape[2], k.shape[2])
    if allowed.shape[1] == 1 and q.shape[1] > 1:
        allowed = allowed.expand(-1, q.shape[1], -1, -1)
    out = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=allowed, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
    )
    # a row with no allowed key: 0, as FlexAttention gives (no NaN reaches the gradients)
    return torch.where(allowed.any(-1, keepdim=True), out, 0.0)


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """x [B, H, S, D] padded with zero rows at the end to `rows`."""
    return x if x.shape[2] == rows else torch.nn.functional.pad(x, (0, 0, 0, rows - x.shape[2]))


#: K+V bytes of one kv head above which block-sparse FlexAttention runs in passes over key
#: ranges of about this size (`block_sparse_flex`): random tiles spread each query tile's
#: reads over its whole kv head, which L2 (50 MB on H100) holds at 128K (64 MiB of bf16 K+V
#: at D=128) but not at 256K. H100, 32/8 heads, top 100 (perf/tune_kernels.py --only
#: bs_split): at 256K two passes took 72.9-75.1 ms against 77.8-81.0 for one; at 128K one
#: pass was the faster (31.6-33.0 against 33.0-34.8 ms).
KEY_SPLIT_BYTES = 64 * 2**20


def merge_by_lse(outs: list[torch.Tensor], lses: list[torch.Tensor]) -> torch.Tensor:
    """Attention over the union of disjoint key sets from one pass per set: outs [B, H, S, D]
    (each normalised over its own keys), lses [B, H, S] (natural log-sum-exp of the scaled
    scores, -inf where a row has no key in that set). Weighs each pass by exp(lse - total)
    in fp32; returns outs[0]'s dtype."""
    total = torch.logsumexp(torch.stack(lses), dim=0)
    merged = torch.zeros_like(outs[0], dtype=torch.float32)
    for out, lse in zip(outs, lses):
        weight = torch.exp(lse - total)[..., None]
        # a row with no key in this pass has weight 0; its output is not read
        merged = merged + torch.where(weight > 0, out.float() * weight, 0.0)
    return merged.to(outs[0].dtype)


def _flex_key_split(q, k, v, block_masks, scale, enable_gqa, kernel_options):
    """FlexAttention once per mask of `block_sparse_key_split_masks` (pass p: the queries from
    its first row on, its range of key tiles), merged row segment by row segment; q, k, v as
    `flex_attend` hands them over on CUDA, [B, H, n, FLEX_ALIGN, D]."""
    k, v = (t.flatten(2, 3) for t in (k, v))
    v = _poison_values(k, v)
    q_rows = q.shape[2] * FLEX_ALIGN
    starts, outs, lses = [], [], []
    for mask in block_masks:
        # q is [B, H, n, FLEX_ALIGN, D]: a pass's queries are its last whole FLEX_ALIGN blocks
        units = mask.kv_num_blocks.shape[-1] * mask.BLOCK_SIZE[0] // FLEX_ALIGN
        q_pass = q[:, :, q.shape[2] - units:].flatten(2, 3)
        out, lse = flex_attention(q_pass, k, v, block_mask=mask, scale=scale, enable_gqa=enable_gqa,
                                  kernel_options=kernel_options, return_lse=True)
        starts.append(q_rows - q_pass.shape[2])
        outs.append(out)
        lses.append(lse)
    result = outs[0]
    for p in range(1, len(block_masks)):
        # rows [starts[p], next start) are attended by passes 0..p
        lo, hi = starts[p], (starts[p + 1] if p + 1 < len(starts) else q_rows)
        result[:, :, lo:hi] = merge_by_lse(
            [outs[j][:, :, lo - starts[j]:hi - starts[j]] for j in range(p + 1)],
            [lses[j][:, :, lo - starts[j]:hi - starts[j]] for j in range(p + 1)],
        )
    return _poison_rows(q.flatten(2, 3), result)


@functools.cache
def _compiled_flex_key_split(device: torch.device = torch.device("cuda", 0)):
    """`_flex_key_split` compiled for the tensors of `device` (a compile cache per device)."""
    return torch.compile(per_device_copy(_flex_key_split, device))


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
    q_len: int | None = None,
    for_backward: bool = False,
) -> BlockMask:
    """BlockMask of a [q_len (default seq_len), seq_len] grid from (indices, counts) of its
    partial and full blocks; with for_backward also the q-direction indices that FlexAttention's
    backward walks."""
    idx, num = partial
    full_idx, full_num = full
    # The CUDA kernel addresses partial and full lists with one set of strides, so both get
    # one width. Inductor's CPU template also asserts that the width spans the sequence, and
    # the q-direction transpose needs that width up to torch 2.13 (pytorch#153344).
    width = max(idx.shape[-1], full_idx.shape[-1])
    if idx.device.type == "cpu" or for_backward:
        width = max(width, math.ceil(seq_len / block))
    idx, full_idx = _pad_width(idx, width), _pad_width(full_idx, width)
    return BlockMask.from_kv_blocks(
        num,
        idx,
        full_num,
        full_idx,
        BLOCK_SIZE=block,
        mask_mod=mask_mod,
        seq_lengths=(seq_len if q_len is None else q_len, seq_len),
        compute_q_blocks=for_backward,
    )


def _mask_scalar(value: int, device: torch.device) -> torch.Tensor | int:
    """A mask_mod parameter: a 0-dim tensor, so that new values reuse the compiled kernel; a
    plain int on CPU inside a torch.compile region, where Inductor's CPU template takes no
    tensor made inside the graph."""
    if torch.device(device).type == "cpu" and torch.compiler.is_compiling():
        return value
    return torch.full((), value, dtype=torch.int32, device=device)


def a_shape_front_rows(q_len: int, seq_len: int) -> int:
    """Rows of zeros to put before q [B, H, Sq, D] (the last Sq of Sk positions) so that its
    first row sits at a multiple of `A_SHAPE_BLOCK`, as `a_shape_block_mask` expects."""
    return (seq_len - q_len) % A_SHAPE_BLOCK


def a_shape_block_mask(
    batch: int,
    heads: int,
    seq_len: int,
    init_num: int | tuple[int, ...],
    local_window_num: int | tuple[int, ...],
    device: torch.device,
    block: int = A_SHAPE_BLOCK,
    q_len: int | None = None,
    for_backward: bool = False,
) -> BlockMask:
    """BlockMask of A-shape attention (see `_build_a_shape_block_mask`), cached outside
    torch.compile: it depends only on its integer arguments and is reused across layers.

    seq_len: Sk padded to FLEX_ALIGN. q_len: the query rows, the last of the seq_len
    positions (default all), padded to a multiple of `block` (put `a_shape_front_rows` zero
    rows before the queries: then their first row sits on a block boundary).
    init_num and local_window_num are one int for every head or a tuple of one per query
    head; a head with (0, 0) gets no blocks at all (it belongs to another pattern).
    for_backward: also the q-direction indices (for FlexAttention's backward).
    """
    if isinstance(init_num, int):
        init_num = (init_num,) * heads
    if isinstance(local_window_num, int):
        local_window_num = (local_window_num,) * heads
    q_len = seq_len if q_len is None else q_len
    if q_len % block or seq_len % block or q_len > seq_len:
        raise ValueError(f"a_shape_block_mask: q_len ({q_len}) and seq_len ({seq_len}) must be multiples of "
                         f"{block} with q_len <= seq_len; pad them with flex_padded_length")
    args = (batch, heads, seq_len, tuple(init_num), tuple(local_window_num), torch.device(device), block, q_len,
            for_backward)
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
    q_len: int | None = None,
    for_backward: bool = False,
) -> BlockMask:
    """BlockMask of A-shape attention for the last q_len of seq_len positions (both multiples
    of `block`): for head h, the query at p attends key j iff
    j <= p and (j < init_num[h] or p - j < local_window_num[h]).

    Query block m (absolute) needs the sink blocks [0, ceil(init/bs)) and the local blocks
    from the one holding key m*bs - local + 1 up to m; a block is full when every (p, j) pair
    in it passes. Slots: [0, W_sink) for sinks, then W_local for the local run, per head
    [H, Mq, W].
    """
    nblocks = math.ceil(seq_len / block)
    q_len = seq_len if q_len is None else q_len
    first_block = (seq_len - q_len) // block
    n_sink_h = [min(math.ceil(i / block), nblocks) for i in init_num]
    w_sink = max(n_sink_h)
    w_local = min(max(math.ceil(max(w - 1, 0) / block) + 2 for w in local_window_num), nblocks)
    init_t = torch.tensor(init_num, device=device)
    local_t = torch.tensor(local_window_num, device=device)
    n_sink = torch.tensor(n_sink_h, device=device)[:, None, None]
    init_h, local_h = init_t[:, None, None], local_t[:, None, None]
    m = first_block + torch.arange(q_len // block, device=device)[None, :, None]
    slot = torch.arange(w_sink + w_local, device=device)[None, None, :]
    local_first = torch.clamp(m * block - local_h + 1, min=0) // block
    local_first = torch.maximum(local_first, n_sink)
    is_sink = slot < w_sink
    kv = torch.where(is_sink, slot, local_first + slot - w_sink)
    live = (kv <= m) & torch.where(is_sink, slot < n_sink, local_h > 0)
    full_sink = is_sink & ((kv + 1) * block <= init_h)
    full_local = ~is_sink & ((m + 1) * block - 1 - kv * block < local_h)
    full = live & (kv < m) & (full_sink | full_local)
    shape = (batch, heads, q_len // block, w_sink + w_local)
    kv = kv.expand(shape)
    # the absolute position of query row 0, as a tensor: every chunk reuses the kernel
    first = _mask_scalar(first_block * block, device)

    budgets = {(i, w) for i, w in zip(init_num, local_window_num) if i + w > 0}
    if len(budgets) == 1:
        # one budget for every active head (heads without blocks never reach mask_mod): 0-dim
        # tensors, which keep Inductor's CPU template away from per-head tensors; plain ints
        # would turn into symbols it miscompiles once a second budget makes them dynamic
        one_init, one_local = (_mask_scalar(x, device) for x in budgets.pop())

        def a_shape(b, h, q_idx, kv_idx):
            pos = q_idx + first
            return (pos >= kv_idx) & ((kv_idx < one_init) | (pos - kv_idx < one_local))
    else:

        def a_shape(b, h, q_idx, kv_idx):
            pos = q_idx + first
            return (pos >= kv_idx) & ((kv_idx < init_t[h]) | (pos - kv_idx < local_t[h]))

    return _from_kv_blocks(
        _compact(kv, (live & ~full).expand(shape), nblocks),
        _compact(kv, full.expand(shape), nblocks),
        block,
        seq_len,
        a_shape,
        q_len=q_len,
        for_backward=for_backward,
    )


def a_shape_attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    init_num: int | tuple[int, ...],
    local_window_num: int | tuple[int, ...],
    scale: float,
) -> torch.Tensor:
    """A-shape FlexAttention of q [B, H, Sq, D] (the last Sq of Sk positions) over k, v
    [B, Hkv, Sk, D]; [B, H, Sq, D]. Budgets as in `a_shape_block_mask`. The queries go on a
    block boundary behind `a_shape_front_rows` zero rows, whose outputs are dropped."""
    mask, front = a_shape_mask_for(q, k, init_num, local_window_num, q.is_cuda and needs_grad(q, k, v))
    if front:
        q = torch.nn.functional.pad(q, (0, 0, front, 0))
    return flex_attend(q, k, v, mask, scale)[:, :, front:]


def a_shape_mask_for(
    q: torch.Tensor,
    k: torch.Tensor,
    init_num: int | tuple[int, ...],
    local_window_num: int | tuple[int, ...],
    for_backward: bool = False,
) -> tuple[BlockMask, int]:
    """(mask, front): the BlockMask `a_shape_attend` runs for q [B, H, Sq, D] (the last Sq
    of Sk positions) over k [B, Hkv, Sk, D], and the `a_shape_front_rows` zero rows it puts
    before q; mask row r is the absolute position Sk - Sq - front + r."""
    q_len, seq_len = q.shape[2], k.shape[2]
    # budgets past the keys change nothing: clamped, they fit the mask's int32 arithmetic
    init_num, local_window_num = (
        min(b, seq_len) if isinstance(b, int) else tuple(min(x, seq_len) for x in b) for b in (init_num, local_window_num)
    )
    front = a_shape_front_rows(q_len, seq_len)
    mask = a_shape_block_mask(
        q.shape[0], q.shape[1], flex_padded_length(seq_len), init_num, local_window_num, q.device,
        q_len=flex_padded_length(q_len + front), for_backward=for_backward,
    )
    return mask, front


def _causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def _causal_from(first_row: int, device: torch.device):
    """Causal mask_mod of queries that start at row `first_row` (a tensor: no recompiles)."""
    offset = _mask_scalar(first_row, device)

    def causal_from(b, h, q_idx, kv_idx):
        return q_idx + offset >= kv_idx

    return causal_from


def block_sparse_block_mask(
    tiles: torch.Tensor,
    count: torch.Tensor,
    seq_len: int,
    block_size: int,
    active_heads: torch.Tensor | None = None,
    q_len: int | None = None,
    for_backward: bool = False,
) -> BlockMask:
    """BlockMask from `estimate.select_block_sparse_tiles` output, for the queries at the last
    q_len (default seq_len) of seq_len positions, on the padded grid: the chosen tiles are
    full; the key tiles holding the query tile's own positions (the diagonal tile, and the
    one after it when Sk - Sq is not a multiple of block_size) are partial (causal); query
    tiles past the sequence get no full tiles. Heads where `active_heads` [H] bool is False
    get no blocks at all (they belong to another pattern). for_backward: also the q-direction
    indices (for FlexAttention's backward)."""
    return block_sparse_key_split_masks(tiles, count, seq_len, block_size, 1, active_heads, q_len, for_backward)[0]


def key_split_parts(k: torch.Tensor) -> int:
    """How many key-range passes `block_sparse_flex` runs for k [B, Hkv, S, D]: one per
    `KEY_SPLIT_BYTES` of one kv head's K and V, rounded up; one on CPU."""
    if not k.is_cuda:
        return 1
    return max(1, math.ceil(2 * k.shape[2] * k.shape[3] * k.element_size() / KEY_SPLIT_BYTES))


def block_sparse_key_split_masks(
    tiles: torch.Tensor,
    count: torch.Tensor,
    seq_len: int,
    block_size: int,
    parts: int,
    active_heads: torch.Tensor | None = None,
    q_len: int | None = None,
    for_backward: bool = False,
) -> list[BlockMask]:
    """`block_sparse_block_mask` cut at key-tile bounds b_0 = 0 < b_1 < ... < b_P = the padded
    key-tile count (multiples of FLEX_ALIGN, near-equal) into one mask per pass: pass p
    attends the query tiles that reach key tile b_p (from a FLEX_ALIGN row boundary on) to
    their chosen tiles in [b_p, b_{p+1}) and to those of their own key tiles that fall there.
    The passes together attend exactly what the one mask does (a query tile's tiles all lie at
    or before its own, so no pass misses a row). With parts > 1 each row's tiles must be
    ascending, as `select_block_sparse_tiles` gives."""
    q_len = seq_len if q_len is None else q_len
    first = seq_len - q_len
    shift, unaligned = divmod(first, block_size)
    padded = flex_padded_length(seq_len)
    nblocks = padded // block_size
    q_blocks = flex_padded_length(q_len) // block_size
    align = max(FLEX_ALIGN // block_size, 1)
    units = nblocks // align
    bounds = sorted({units * i // parts * align for i in range(parts)} | {nblocks})
    extra = q_blocks - tiles.shape[2]
    tiles = torch.nn.functional.pad(tiles, (0, 0, 0, extra), value=0)
    count = torch.nn.functional.pad(count, (0, extra), value=0)
    bsz, heads, _, width = tiles.shape
    device = tiles.device
    on = torch.ones(1, heads, 1, dtype=torch.int32, device=device)
    if active_heads is not None:
        on = active_heads.to(device=device, dtype=torch.int32)[None, :, None]
    slots = torch.arange(width, device=device)
    # the key tiles of each query tile's own positions: n0 = m + shift, and n0 + 1 unaligned
    own = shift + torch.arange(q_blocks, device=device, dtype=torch.int32)[:, None]
    own = own + torch.arange(2 if unaligned else 1, device=device, dtype=torch.int32)
    # a row's chosen tiles are ascending, so those below each bound are a prefix of its slots
    below = {0: None, nblocks: count}
    for b in bounds[1:-1]:
        below[b] = ((tiles < b) & (slots < count[..., None])).sum(-1, dtype=torch.int32)
    masks = []
    for lo, hi in zip(bounds, bounds[1:]):
        # the query tiles whose last own key tile is >= lo, from a FLEX_ALIGN boundary on
        m_first = max(0, lo - shift - (1 if unaligned else 0)) // align * align
        if m_first >= q_blocks:
            continue
        rows = q_blocks - m_first
        if lo == 0:  # the prefix of each row's list
            chosen, inside = tiles, below[hi]
        else:
            start = below[lo][..., m_first:]
            picked = (start[..., None] + slots).clamp(max=width - 1)
            chosen = tiles[:, :, m_first:].gather(-1, picked)
            inside = below[hi][..., m_first:] - start
        mask_mod = _causal if first + m_first * block_size == 0 else _causal_from(first + m_first * block_size, device)
        diagonal = own[m_first:]
        keep = (diagonal >= lo) & (diagonal < hi)
        diagonal, ones = _compact(diagonal.expand(1, 1, *diagonal.shape), keep.expand(1, 1, *keep.shape), nblocks)
        masks.append(_from_kv_blocks(
            (diagonal.expand(bsz, heads, *diagonal.shape[2:]).contiguous(), (ones * on).expand(bsz, heads, rows).contiguous()),
            (chosen.contiguous(), (inside * on).contiguous()),
            block_size, padded, mask_mod, q_len=rows * block_size, for_backward=for_backward,
        ))
    return masks


def block_sparse_flex(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    tiles: torch.Tensor,
    count: torch.Tensor,
    block_size: int,
    scale: float,
    active_heads: torch.Tensor | None = None,
) -> torch.Tensor:
    """Block-sparse FlexAttention of q [B, H, Sq, D] (the last Sq of Sk positions) over k, v
    [B, Hkv, Sk, D] on the tiles of `estimate.select_block_sparse_tiles`; [B, H, Sq, D]. One
    pass, or `key_split_parts(k)` passes over key ranges merged by log-sum-exp where a kv
    head outgrows L2. With gradients (`needs_grad`): on CUDA the Triton training op
    (`custom_ops.block_sparse`), on CPU one FlexAttention-mask pass (`flex_attend`)."""
    seq_len, q_len = k.shape[2], q.shape[2]
    if needs_grad(q, k, v):
        if q.is_cuda:
            return block_sparse_attention_with_grad(q, k, v, tiles, count, block_size, scale, active_heads)
        mask = block_sparse_block_mask(tiles, count, seq_len, block_size, active_heads, q_len)
        return flex_attend(q, k, v, mask, scale)
    masks = block_sparse_key_split_masks(tiles, count, seq_len, block_size, key_split_parts(k), active_heads, q_len)
    return flex_attend(q, k, v, masks, scale)
