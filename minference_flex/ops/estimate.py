"""Cheap on-device estimators that pick which keys each head computes.

Pure functions of (q, k) returning index tensors; no host sync, no Python loop over heads,
and K is never repeated for grouped-query attention (queries are grouped onto their K head).
Indices are not differentiable: the estimators read q and k detached, so training records
nothing for them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from custom_ops.top_tiles import top_tiles
from custom_ops.vertical_slash_scores import vertical_slash_scores

from minference_flex.ops import checks

#: Keys that `estimate_vertical_slash` always keeps as columns (attention sinks).
FORCED_VERTICAL = 30
#: Slash offsets 0..FORCED_SLASH-1 (the most local diagonals) that are always kept.
FORCED_SLASH = 100


def vertical_slash_counts(seq_len: int, vertical_size: int, slash_size: int) -> tuple[int, int]:
    """Number of (vertical, slash) indices the estimator returns for a prompt of `seq_len`.

    The always-kept columns and diagonals are part of the budget, so a budget below them is
    raised to them; a budget above the sequence is clamped to it.
    """
    return _at_most(max(vertical_size, FORCED_VERTICAL), seq_len), _at_most(max(slash_size, FORCED_SLASH), seq_len)


def _at_most(budget: int, length: int) -> int:
    """min(budget, length), kept a plain int when the budget fits: under torch.compile with a
    dynamic length, min() would make every index width a symbolic Min(length, budget), which
    Inductor failed to lower in a compiled training step; the comparison is a guard instead."""
    return budget if budget <= length else length


def _grouped_last_scores(
    q: torch.Tensor, k: torch.Tensor, last_q: int, scale: float
) -> torch.Tensor:
    """Scaled scores of the last `last_q` queries against all Sk keys: [B, H, last_q, Sk],
    unmasked (q [B, H, Sq, D] holds the last Sq positions, last_q <= Sq).

    One matmul per K head in the inputs' dtype (fp32 accumulation), so K is read once and
    never repeated or upcast.
    """
    bsz, heads, q_len, dim = q.shape
    kv_heads, seq_len = k.shape[1], k.shape[2]
    group = heads // kv_heads
    q_last = (q[:, :, q_len - last_q :].float() * scale).to(q.dtype)
    q_last = q_last.reshape(bsz, kv_heads, group * last_q, dim)
    return torch.matmul(q_last, k.transpose(-1, -2)).view(bsz, heads, last_q, seq_len)


def grouped_last_probs(
    q: torch.Tensor, k: torch.Tensor, last_q: int, scale: float
) -> torch.Tensor:
    """Causal softmax in fp32 of the last `last_q` queries against all keys: [B, H, last_q, S]."""
    scores = _grouped_last_scores(q, k, last_q, scale)
    seq_len = scores.shape[-1]
    rows = torch.arange(last_q, device=q.device)
    corner = rows[None, :] > rows[:, None]
    scores[..., seq_len - last_q :].masked_fill_(corner, float("-inf"))
    return torch.softmax(scores, dim=-1, dtype=torch.float32)


#: Largest score buffer (bytes) an estimator materialises at once: heads are processed in
#: groups of whole K heads below it, so a 1M-token prompt needs no more memory than 128K
#: (block-sparse tile scores alone would be 17 GB at 1M tokens and 32 heads).
SCORE_BUFFER_BYTES = 1 << 30


def _kv_head_chunks(kv_heads: int, group: int, bytes_per_head: int) -> list[tuple[int, int]]:
    """K-head ranges [a, b) whose query heads' buffers (bytes_per_head each) fit the budget."""
    step = max(1, SCORE_BUFFER_BYTES // max(1, group * bytes_per_head))
    return [(a, min(a + step, kv_heads)) for a in range(0, kv_heads, step)]


def _in_head_chunks(fn, q: torch.Tensor, k: torch.Tensor, bytes_per_head: int, *args):
    """Concatenate fn(q_part, k_part, *args) over K-head chunks (tuples of tensors, by head)."""
    group = q.shape[1] // k.shape[1]
    chunks = _kv_head_chunks(k.shape[1], group, bytes_per_head)
    if len(chunks) == 1:
        return fn(q, k, *args)
    parts = [fn(q[:, a * group : b * group], k[:, a:b], *args) for a, b in chunks]
    return tuple(torch.cat(tensors, dim=1) for tensors in zip(*parts))


def last_query_sums(
    q: torch.Tensor, k: torch.Tensor, last_q: int, scale: float, columns: bool = True, diagonals: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(vertical, slash) [B, H, S] fp32: the last queries' causal softmax summed down each key
    column and along each diagonal offset i - j. A side whose flag is off is not computed and
    comes back as [B, H, 0].

    On CUDA a fused Triton op (`minference_flex::vertical_slash_scores`) reads the scores
    twice and never materialises the fp32 probabilities; on CPU the same in PyTorch. Heads
    go in chunks that keep the scores under `SCORE_BUFFER_BYTES`.
    """
    bsz, seq_len = q.shape[0], k.shape[2]
    # the scores in q's dtype; on CPU the fp32 probabilities as well
    per_head = bsz * last_q * seq_len * (q.element_size() + (0 if q.is_cuda else 4))
    return _in_head_chunks(_last_query_sums, q, k, per_head, last_q, scale, columns, diagonals)


def _last_query_sums(
    q: torch.Tensor, k: torch.Tensor, last_q: int, scale: float, columns: bool, diagonals: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    if q.is_cuda:
        return vertical_slash_scores(_grouped_last_scores(q, k, last_q, scale), columns, diagonals)
    probs = grouped_last_probs(q, k, last_q, scale)
    empty = probs.new_empty(*probs.shape[:2], 0)
    return probs.sum(-2) if columns else empty, _diagonal_sums(probs) if diagonals else empty


def _diagonal_sums(probs: torch.Tensor) -> torch.Tensor:
    """slash[..., s] = sum_a probs[..., a, S - L + a - s] for probs [..., L, S]; returns [..., S].

    Offsets s <= S - L read key a + (S - L - s) in row a: a strided view with row stride S + 1
    lines them up without a copy. Larger offsets only reach the first L keys (the L x L
    corner) and are summed there.
    """
    *lead, last_q, seq_len = probs.shape
    probs = probs.contiguous()
    sheared = probs.as_strided(
        (*probs.shape[:-2], last_q, seq_len - last_q + 1),
        (*probs.stride()[:-2], seq_len + 1, 1),
    )
    near = sheared.sum(-2).flip(-1)
    rows = torch.arange(last_q, device=probs.device)
    below = (rows[:, None] - rows[None, :]).clamp(min=0)  # corner key j = a - d, d = s - (S - L)
    corner = torch.zeros(*lead, last_q, dtype=probs.dtype, device=probs.device)
    corner.scatter_add_(-1, below.flatten().expand(*lead, -1), probs[..., :last_q].flatten(-2))
    return torch.cat([near, corner[..., 1:]], dim=-1)


def estimate_vertical_slash(
    q: torch.Tensor,
    k: torch.Tensor,
    vertical_size: int | Sequence[int],
    slash_size: int | Sequence[int],
    last_q: int = 64,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Estimate each query head's vertical columns and slash diagonals.

    Args:
        q: [B, H, Sq, D] queries, the last Sq of the Sk key positions (query i at
            p = Sk - Sq + i); k: [B, Hkv, Sk, D] keys, H % Hkv == 0, Sq <= Sk.
        vertical_size, slash_size: budgets (numbers of columns / diagonals), >= 0; one int for
            every head or a sequence of H ints (one per query head).
        last_q: how many of the last queries probe the attention (clamped to Sq).
        scale: softmax scale, default 1/sqrt(D).

    Returns:
        (v_idx [B, H, NV], s_idx [B, H, NS]) int64 with (NV, NS) =
        `vertical_slash_counts(Sk, vertical_size, slash_size)` (the largest over heads with
        per-head budgets; a head's entries past its own count are -1, which the attention
        ignores). v_idx holds absolute key positions, s_idx offsets p - j.

    The last `last_q` queries are scored against all Sk keys (scaled, causal by absolute
    position) and soft-maxed in fp32. A key's vertical score is the sum of its column; an
    offset's slash score is the sum along the diagonal p - j = offset. The first 30 keys and
    the offsets 0..99 are always kept; the rest are the top-k scores per query head.
    """
    checks.check_qkv(q, k, k)
    q, k = q.detach(), k.detach()
    heads, seq_len = q.shape[1], k.shape[2]
    verticals = checks.check_budgets("vertical_size", vertical_size, heads)
    slashes = checks.check_budgets("slash_size", slash_size, heads)
    last_q = checks.check_nonnegative_int("last_q", last_q, minimum=1)
    last_q = _at_most(last_q, q.shape[2])
    scale = q.shape[-1] ** -0.5 if scale is None else checks.check_scale(scale)
    counts = [vertical_slash_counts(seq_len, a, b) for a, b in zip(verticals, slashes)]
    nv = max(c[0] for c in counts)
    ns = max(c[1] for c in counts)

    # A budget no larger than the always-kept set picks exactly that set (every head's count
    # is then nv, resp. ns): its scores are not computed.
    columns, diagonals = nv > FORCED_VERTICAL, ns > FORCED_SLASH
    if columns or diagonals:
        vertical, slash = last_query_sums(q, k, last_q, scale, columns, diagonals)
    per_head = len(set(counts)) > 1
    bsz = q.shape[0]
    if columns:
        v_idx = _top_scores(vertical, nv, FORCED_VERTICAL, [c[0] for c in counts], per_head)
    else:
        v_idx = torch.arange(nv, device=q.device).expand(bsz, heads, nv).contiguous()
    if diagonals:
        s_idx = _top_scores(slash, ns, FORCED_SLASH, [c[1] for c in counts], per_head)
    else:
        s_idx = torch.arange(ns, device=q.device).expand(bsz, heads, ns).contiguous()
    return v_idx, s_idx


def _top_scores(
    scores: torch.Tensor, width: int, forced: int, counts: list[int], per_head: bool
) -> torch.Tensor:
    """The first `forced` positions and the best-scoring others of scores [B, H, S]: [B, H,
    width]; with per-head counts best first, each head's entries past its count -1."""
    scores[..., :forced] = float("inf")
    idx = scores.topk(width, dim=-1, sorted=per_head).indices
    return _truncate(idx, counts) if per_head else idx


def _truncate(idx: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Replace entries past each head's count with -1; idx [B, H, N]."""
    limit = torch.tensor(counts, device=idx.device)[:, None]
    return torch.where(torch.arange(idx.shape[-1], device=idx.device) < limit, idx, -1)


def pool_tiles(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """Mean of x [B, H, S, D] over tiles of `block_size` tokens in fp32: [B, H, ceil(S/bs), D].

    A last partial tile is the mean of the tokens it has.
    """
    bsz, heads, seq_len, dim = x.shape
    whole = seq_len // block_size
    body = x[:, :, : whole * block_size].unflatten(2, (whole, block_size))
    means = [body.mean(-2, dtype=torch.float32)]
    if whole * block_size < seq_len:
        means.append(x[:, :, whole * block_size :].mean(-2, keepdim=True, dtype=torch.float32))
    return torch.cat(means, dim=2) if len(means) > 1 else means[0]


def pooled_tile_scores(q: torch.Tensor, k: torch.Tensor, block_size: int = 64) -> torch.Tensor:
    """[B, H, Mq, Mk] dot products of mean-pooled query tiles (of q's rows) and key tiles (of
    k's absolute positions), in the inputs' dtype (entries past the causal limit are computed
    too; callers ignore them). q [B, H, Sq, D], k [B, Hkv, Sk, D].

    On CUDA a bf16/fp16 matmul and top-k over [M, M] per head cost a third of fp32's
    (256K tokens: 16 ms in fp32); fp32 inputs stay exact.
    """
    return _pooled_scores(*_pooled_tiles(q, k, block_size))


def _pooled_tiles(q: torch.Tensor, k: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean-pooled q and k tiles in the inputs' dtype: [B, H, M, D] and [B, Hkv, M, D]."""
    return pool_tiles(q, block_size).to(q.dtype), pool_tiles(k, block_size).to(q.dtype)


def _pooled_scores(pooled_q: torch.Tensor, pooled_k: torch.Tensor) -> torch.Tensor:
    bsz, heads, q_blocks, dim = pooled_q.shape
    kv_heads, k_blocks = pooled_k.shape[1], pooled_k.shape[2]
    grouped = pooled_q.reshape(bsz, kv_heads, (heads // kv_heads) * q_blocks, dim)
    return torch.matmul(grouped, pooled_k.transpose(-1, -2)).view(bsz, heads, q_blocks, k_blocks)


def _select_from_pooled(
    pooled_q: torch.Tensor, pooled_k: torch.Tensor, topk: int, shift: int
) -> tuple[torch.Tensor, torch.Tensor]:
    scores = _pooled_scores(pooled_q, pooled_k)
    if scores.is_cuda:  # a radix search per row: no sort, tiles come out ascending
        return top_tiles(scores, topk, shift)
    return _top_tiles_torch(scores, topk, shift)


def select_block_sparse_tiles(
    q: torch.Tensor, k: torch.Tensor, topk: int, block_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick the key tiles of each query tile for `block_sparse_attention`.

    Args:
        q: [B, H, Sq, D], the last Sq of the Sk positions; k: [B, Hkv, Sk, D]; topk >= 1;
            block_size: tile size.

    Returns:
        (tiles, count): tiles [B, H, Mq, W] int32 with Mq = ceil(Sq/bs), Mk = ceil(Sk/bs),
        W = min(topk, Mk). Query tile m (q rows [m*bs, (m+1)*bs), first position
        Sk - Sq + m*bs) scores the key tiles n <= n0 = m + (Sk - Sq) // bs (those whose first
        key is at or before its first position) and keeps the topk best of them, less n0:
        the first count entries are valid, ascending on CUDA, in no particular order on CPU;
        the rest are padding Mk. count [B, H, Mq] int32. The key tiles holding the query
        tile's own positions (n0, and n0 + 1 when Sk - Sq is not a multiple of bs) are
        always kept and are not in `tiles`: callers add them as partial (causal) tiles. The
        [Mq, Mk] scores are built for chunks of heads under `SCORE_BUFFER_BYTES`.
    """
    pooled_q, pooled_k = _pooled_tiles(q.detach(), k.detach(), block_size)
    per_head = q.shape[0] * pooled_q.shape[2] * pooled_k.shape[2] * q.element_size()
    shift = (k.shape[2] - q.shape[2]) // block_size
    return _in_head_chunks(_select_from_pooled, pooled_q, pooled_k, per_head, topk, shift)


def _top_tiles_torch(scores: torch.Tensor, topk: int, shift: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`custom_ops.top_tiles` in PyTorch (the CPU path): same rows, tiles in no particular order."""
    bsz, heads, q_blocks, nblocks = scores.shape
    diagonal = shift + torch.arange(q_blocks, device=scores.device)[:, None]
    tiles = torch.arange(nblocks, device=scores.device)
    scores = scores.masked_fill(tiles[None, :] > diagonal, float("-inf"))
    width = _at_most(topk, nblocks)
    # Packing the kept tiles (not -inf, not the diagonal) to the front is a cumsum and a
    # scatter, much cheaper than sorting the indices.
    best = scores.topk(width, dim=-1, sorted=False)
    below_diagonal = (best.values > float("-inf")) & (best.indices != diagonal)
    slot = torch.where(below_diagonal, torch.cumsum(below_diagonal, -1) - 1, width)
    chosen = torch.full((bsz, heads, q_blocks, width + 1), nblocks, dtype=torch.int32, device=scores.device)
    chosen.scatter_(-1, slot, best.indices.to(torch.int32))
    count = below_diagonal.sum(-1, dtype=torch.int32)
    return chosen[..., :width].contiguous(), count
