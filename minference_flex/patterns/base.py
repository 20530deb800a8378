"""The pattern interface and its registry.

A pattern kind is one object (a `SparsePattern`) that knows
- its config name (MInference's file format: `[name, a, b, score]` per head) and what its two
  budgets mean (`budget_names`, `check_budgets`);
- how one group of heads of a layer runs it (`attend`: estimate the index on the device, then
  attend through a Triton op or a FlexAttention BlockMask), returning what it used as the
  index an `AttentionCall` event carries;
- the 64 x 64 tiles such a call computed (`tiles`, from that event) and the tiles it would
  compute from its budgets alone (`cost`, for the search when no data is at hand).

`sparse_prefill`, the config parser, tile counting and the search's costs iterate over
`registered()`. A new pattern is one new module that subclasses SparsePattern and calls
`register(...)`, imported by `minference_flex.patterns`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from minference_flex.patterns.events import AttentionCall


@dataclass(frozen=True)
class GroupInputs:
    """What a pattern group gets besides q, k, v: the layer's per-query-head budgets with
    (0, 0) on the heads of other patterns, the group's heads, and the pre-fill's settings."""

    heads: tuple[int, ...]
    a: tuple[int, ...]
    b: tuple[int, ...]
    scale: float
    last_q: int = 64
    block_size: int = 64
    dense_fallback: bool = True
    exact_masks: bool = False


class SparsePattern:
    """One pattern kind. Subclasses set the class attributes and implement `attend`, `tiles`
    and `cost`."""

    #: Name in pattern config files.
    name: ClassVar[str]
    #: Short name for tables and messages, e.g. "VS".
    label: ClassVar[str]
    #: What the config's two numbers mean, e.g. ("vertical size", "slash size").
    budget_names: ClassVar[tuple[str, str]]
    #: Short names in candidate specs (`search --budget vs:1000,6096`); the config name works too.
    aliases: ClassVar[tuple[str, ...]] = ()
    #: False where the config's two numbers are ignored (the spec is then the alias alone).
    takes_budgets: ClassVar[bool] = True
    #: How to write a candidate, e.g. "vs:VERTICAL,SLASH (e.g. vs:1000,6096)".
    spec_help: ClassVar[str] = ""

    def check_budgets(self, a: int, b: int) -> str | None:
        """A message naming what is wrong with these (non-negative integer) budgets, or None."""
        return None

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group: GroupInputs
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Run the group's heads: q [B, H, Sq, D] over k, v [B, Hkv, Sk, D] (the last Sq of Sk
        positions, causal). Returns ([B, H, Sq, D] whose rows of `group.heads` are the group's
        output, the index it used for the group's AttentionCall)."""
        raise NotImplementedError

    def tiles(self, call: AttentionCall) -> int:
        """64 x 64 tiles the call computed for its heads, summed over the batch."""
        raise NotImplementedError

    def tile_keep(self, q: torch.Tensor, k: torch.Tensor, group: GroupInputs, tiles: list[int]) -> torch.Tensor:
        """For the search's recall: [B, H, T, M] bool, the key tiles (of `group.block_size`) that
        each sampled query tile in `tiles` (ascending) attends, on the group's heads (q, k
        [B, H(kv), S, D], a whole prompt). Patterns that keep whole tiles implement it;
        vertical-slash and A-shape have their own exact paths in `metrics.recall`."""
        raise NotImplementedError(f"pattern {self.name!r} cannot be scored by the search: implement tile_keep")

    def cost(self, a: int, b: int, seq_len: int, block_size: int = 64) -> float:
        """Tiles the pattern computes with these budgets at this length, as a fraction of the
        M(M+1)/2 dense causal tiles (M = ceil(S / bs)); analytical, needs no data."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<pattern {self.name}>"


def head_mask(heads: tuple[int, ...], num_heads: int, device) -> torch.Tensor:
    """[H] bool: True on `heads` (a group's heads among a layer's query heads)."""
    mask = torch.zeros(num_heads, dtype=torch.bool)
    mask[list(heads)] = True
    return mask.to(device)


_REGISTRY: dict[str, SparsePattern] = {}


def register(pattern: SparsePattern) -> SparsePattern:
    """Add a pattern kind (its `name` must be new); returns it."""
    if pattern.name in _REGISTRY:
        raise ValueError(f"a pattern named {pattern.name!r} is already registered")
    _REGISTRY[pattern.name] = pattern
    return pattern


def unregister(name: str) -> None:
    """Remove a registered pattern kind (a pattern tried in a notebook, a test's own)."""
    get_pattern(name)
    del _REGISTRY[name]


def registered() -> tuple[str, ...]:
    """Config names of the registered patterns, in registration order."""
    return tuple(_REGISTRY)


def get_pattern(name: str) -> SparsePattern:
    """The registered pattern of this config name."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown pattern {name!r}; expected one of {', '.join(_REGISTRY)}") from None


