"""Events of the compute path: one per attention group a pre-fill runs, for whoever measures.

    with events.listen(fn):          # fn(call: AttentionCall) -> None
        model(ids)

`sparse_prefill` emits one `AttentionCall` per pattern group of a layer (its kind, heads and the
indices it used); a patched model's dense calls emit one of kind DENSE. Nothing is built or
emitted when nobody listens, and nothing while torch.compile traces (`listening`), so compiled
graphs never depend on a listener. Listeners run synchronously and may read device values.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

#: Kind of the calls that ran dense causal attention.
DENSE = "dense"


@dataclass(frozen=True)
class AttentionCall:
    """One group of heads of one attention call: q [B, H, Sq, D] over k [B, Hkv, Sk, D], the
    queries being the last Sq of Sk positions.

    kind: a registered pattern's config name, or DENSE; heads: the query heads whose output this
    group returned; budgets: (a, b) per query head as the group got them ((0, 0) on other
    heads); index: the pattern's own device-side indices (see each pattern's `tiles`); layer:
    the model layer the call ran in (`in_layer`), None outside a patched model's attention."""

    kind: str
    q: torch.Tensor
    k: torch.Tensor
    heads: tuple[int, ...]
    block_size: int = 64
    budgets: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())
    index: dict[str, Any] = field(default_factory=dict)
    dense_fallback: bool = True
    layer: int | None = field(default_factory=lambda: _layer)


_layer: int | None = None
_listeners: list[Callable[[AttentionCall], None]] = []


def listening() -> bool:
    """True when someone listens and no torch.compile trace is running."""
    if torch.compiler.is_compiling():  # first: traced code never reads (and guards on) the list
        return False
    return bool(_listeners)


def emit(call: AttentionCall) -> None:
    for listener in list(_listeners):
        listener(call)


@contextlib.contextmanager
def in_layer(layer: int | None) -> Iterator[None]:
    """Events emitted inside the block name `layer` (a patched model's attention sets it while
    someone listens)."""
    global _layer
    previous, _layer = _layer, layer
    try:
        yield
    finally:
        _layer = previous


@contextlib.contextmanager
def listen(listener: Callable[[AttentionCall], None]) -> Iterator[None]:
    """Call `listener` with every AttentionCall emitted inside the block."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)
