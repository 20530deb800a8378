"""One layer's sparse pre-fill: each query head runs its own pattern, in one call per pattern.

Heads are grouped by pattern kind (`patterns.base`: each registered kind runs its group in one
estimate and one kernel or FlexAttention call, the other heads getting empty budgets). In a
layer of one pattern that call is the whole layer; mixed layers pick each head's output from
its group. Each group emits an `events.AttentionCall` when someone listens (tile counting).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from minference_flex.ops import checks
from minference_flex.patterns import events
from minference_flex.patterns.base import GroupInputs, get_pattern, head_mask, registered
from minference_flex.patterns.config import HeadPattern


@dataclass(frozen=True)
class LayerPlan:
    """Host-side description of one layer's heads, built once by `minference_flex.compile`.

    kinds: pattern per query head; a, b: its budgets (see `config.HeadPattern`).
    """

    kinds: tuple[str, ...]
    a: tuple[int, ...]
    b: tuple[int, ...]

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - set(registered())
        if unknown:
            raise ValueError(f"LayerPlan: unknown pattern {sorted(unknown)}; registered: {', '.join(registered())}")

    @classmethod
    def from_patterns(cls, patterns: list[HeadPattern]) -> LayerPlan:
        return cls(
            tuple(p.kind for p in patterns), tuple(p.a for p in patterns), tuple(p.b for p in patterns)
        )

    def heads_of(self, kind: str) -> tuple[int, ...]:
        return tuple(h for h, k in enumerate(self.kinds) if k == kind)

    def only(self, kind: str) -> tuple[int, ...]:
        """Per head: its `a` budget if the head has `kind`, else 0."""
        return tuple(a if k == kind else 0 for k, a in zip(self.kinds, self.a))

    def only_b(self, kind: str) -> tuple[int, ...]:
        """Per head: its `b` budget if the head has `kind`, else 0."""
        return tuple(b if k == kind else 0 for k, b in zip(self.kinds, self.b))

    def group(self, kind: str, scale: float, last_q: int, block_size: int, dense_fallback: bool,
              exact_masks: bool) -> GroupInputs:
        """What the pattern `kind` gets for its heads of this layer."""
        return GroupInputs(self.heads_of(kind), self.only(kind), self.only_b(kind), scale, last_q, block_size,
                           dense_fallback, exact_masks)


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
    exact_masks: patterns that have one attend through their exact mask with SDPA instead of
    their kernel (vertical-slash, `minference_flex.ops.exact_masks`: same indices, same outputs
    up to rounding, dense cost); the others run as always.
    """
    checks.check_qkv(q, k, v)  # the FlexAttention patterns are not the checked public API
    heads = q.shape[1]
    listening = events.listening()
    outputs: list[tuple[tuple[int, ...], torch.Tensor]] = []
    for kind in registered():
        if kind not in plan.kinds:
            continue
        group = plan.group(kind, scale, last_q, block_size, dense_fallback, exact_masks)
        out, index = get_pattern(kind).attend(q, k, v, group)
        outputs.append((group.heads, out))
        if listening:
            events.emit(events.AttentionCall(kind, q, k, group.heads, block_size, (group.a, group.b), index,
                                             dense_fallback))
    if len(outputs) == 1:
        return outputs[0][1]
    out = outputs[0][1]
    for group_heads, result in outputs[1:]:
        pick = head_mask(group_heads, heads, q.device)[None, :, None, None]
        out = torch.where(pick, result, out)
    return out
