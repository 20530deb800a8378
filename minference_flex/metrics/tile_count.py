"""Count the 64 x 64 tiles the attention kernels compute, against dense causal attention.

    with count_tiles() as tiles:
        model.generate(ids, ...)          # a model patched by minference_flex.compile
    tiles.fraction                        # computed tiles / dense causal tiles

While the context is active, every attention call of a patched model records, per pattern
group, the tiles it computed and the dense causal tiles of the same Sq x Sk rectangle (the
queries are the last Sq of Sk positions; query tile m holds q rows [64m, 64m + 64), and its
dense causal tiles are the key tiles up to and including the one holding its last position:
`causal_tiles`). What counts as computed, from the indices the call actually used:
- vertical-slash: the tiles of the kernel's index (`custom_ops.vertical_slash.head_tiles`),
  or every causal tile where the op falls back to dense (its own decision, `sparse_index`);
- block-sparse: the chosen tiles plus the key tiles holding the query tile's own positions
  (from its first chosen-or-diagonal tile n0 to the tile of its last position: 1 or 2);
- A-shape: the causal 64 x 64 tiles that lie in a block (128 x 128, partial or full) of the
  BlockMask FlexAttention runs; the never-attended upper half of a diagonal block and the
  padding rows are not counted;
- dense calls (short prompts and chunks, decode steps, layers before `starting_layer`):
  all their causal tiles.
A vertical-slash index may read more tiles than dense attention (short prompts, many
offsets), so a fraction can exceed 1. Only the heads whose output a pattern group returns are
counted (a mixed layer's vertical-slash
op that falls back to dense also runs the other heads, whose outputs are dropped), and the
estimation (scores of the last queries, pooled tile scores) is not.

The counts come from the events the compute path emits (`patterns.events`: one AttentionCall
per pattern group, one per dense call) and each pattern's own `tiles`; recording reads device
values (host syncs; vertical-slash rebuilds its index to count it) and runs only inside the
context, never in code torch.compile traces; outside it an attention call pays one list read.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

from minference_flex.patterns import events
from minference_flex.patterns.base import get_pattern
from minference_flex.patterns.tiles import TILE, causal_tiles

__all__ = ["DENSE", "TILE", "TileCount", "causal_tiles", "count_tiles"]

#: Key of the calls that ran dense attention in `TileCount.by_kind`.
DENSE = events.DENSE


@dataclasses.dataclass
class TileCount:
    """Tiles recorded inside one `count_tiles` context. by_kind: per pattern kind (config
    names, or DENSE) [computed, causal] summed over calls, batch rows and heads."""

    by_kind: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    #: The same per model layer (None: calls outside a patched model's attention).
    by_layer: dict[int | None, list[int]] = dataclasses.field(default_factory=dict)

    @property
    def computed(self) -> int:
        return sum(c for c, _ in self.by_kind.values())

    @property
    def causal(self) -> int:
        return sum(d for _, d in self.by_kind.values())

    @property
    def fraction(self) -> float | None:
        """computed / causal over everything recorded; None when nothing was."""
        return self.computed / self.causal if self.causal else None

    def fraction_of_layers(self, layers) -> float | None:
        """computed / causal over the calls of these layers (e.g. a model's full-attention
        layers); None when none was recorded."""
        computed = sum(self.by_layer.get(layer, (0, 0))[0] for layer in layers)
        causal = sum(self.by_layer.get(layer, (0, 0))[1] for layer in layers)
        return computed / causal if causal else None

    def add(self, kind: str, computed: int, causal: int, layer: int | None = None) -> None:
        for totals in (self.by_kind.setdefault(kind, [0, 0]), self.by_layer.setdefault(layer, [0, 0])):
            totals[0] += int(computed)
            totals[1] += int(causal)

    def record(self, call: events.AttentionCall) -> None:
        """Add one attention call: its pattern's tiles, against its heads' dense causal tiles."""
        causal = call.q.shape[0] * len(call.heads) * causal_tiles(call.q.shape[2], call.k.shape[2])
        computed = causal if call.kind == DENSE else get_pattern(call.kind).tiles(call)
        self.add(call.kind, computed, causal, call.layer)


_open: list[TileCount] = []


@contextlib.contextmanager
def count_tiles() -> Iterator[TileCount]:
    """Record the tiles of every attention call of a patched model made inside the block
    (nested contexts: the innermost records)."""
    count = TileCount()

    def innermost(call: events.AttentionCall) -> None:
        if _open and _open[-1] is count:
            count.record(call)

    _open.append(count)
    try:
        with events.listen(innermost):
            yield count
    finally:
        # by identity: two counts with equal totals compare equal
        del _open[next(i for i, c in enumerate(_open) if c is count)]
