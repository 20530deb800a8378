"""Refine a searched pattern config against the model's own predictions.

`search` scores each head's candidates by attention recall. Recall ranks patterns only roughly:
on the shipped retrieval model at 64K, block-sparse top 100 kept more recall than
vertical-slash (30, 800) and lost most pass keys, which (30, 800) kept (perf/RESULTS.md,
"Accuracy"); so a recall rule with a small tolerance ends up dense-equivalent on most heads.

`refine_by_logits` checks what matters instead: the model's next-token distributions. Layer by
layer it tries one candidate on every head of the layer, cheapest first (by the layer's mean
cost in the search's tables), and keeps the first one that
- keeps the model's predictions close to dense: the mean over the calibration prompts and their
  last `positions` positions of KL(dense || sparse), in nats, is at most `kl_tolerance`, with
  every layer changed so far in place; and
- really computes fewer tiles than the layer's present patterns: counted from the indices the
  kernels used (`tile_count`), since a vertical-slash call runs dense as a whole once its heads'
  index passes the dense-fallback fraction, so one dense head can keep cheap ones dense.
A layer no candidate passes for keeps its searched patterns. One candidate for the whole layer
is coarser than the search's per-head choice, and it is what the kernels' per-call fallback
rewards.

Work: one dense forward per prompt, then one sparse forward per prompt for every candidate tried
(at most layers x candidates): for small models or short calibration prompts.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch

from minference_flex.patterns.config import HeadPattern
from minference_flex.pattern_search.search import calibration_ids
from minference_flex.metrics.tile_count import count_tiles

#: Default KL bound (nats, mean over prompts and positions).
KL_TOLERANCE = 0.05


def _check_prompts(model: Any, prompts: Sequence[Any], positions: int) -> list[torch.Tensor]:
    """Each prompt as [1, S] ids on the model's input device, checked as `search` checks its
    calibration prompt (`search.calibration_ids`)."""
    if isinstance(prompts, torch.Tensor) or not isinstance(prompts, (list, tuple)) or not prompts:
        raise TypeError("prompts must be a non-empty list of token id sequences (lists or 1-D tensors)")
    out = []
    for i, ids in enumerate(prompts):
        try:
            ids = calibration_ids(model, ids)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"prompt {i}: {exc}") from None
        if ids.shape[1] < positions:
            raise ValueError(f"prompt {i} has {ids.shape[1]} tokens, fewer than positions={positions}")
        out.append(ids)
    return out


def next_token_log_probs(model: Any, prompts: list[torch.Tensor], positions: int) -> list[torch.Tensor]:
    """Per prompt [1, S], the model's fp32 log-probabilities of the next token at its last
    `positions` positions: [1, positions, V]."""
    with torch.no_grad():
        return [model(ids, logits_to_keep=positions).logits.float().log_softmax(-1) for ids in prompts]


def mean_kl(reference: list[torch.Tensor], other: list[torch.Tensor]) -> float:
    """Mean over prompts and positions of KL(reference || other); both lists of log-probabilities
    [1, P, V] per prompt."""
    kls = [(ref.exp() * (ref - got)).sum(-1).mean() for ref, got in zip(reference, other)]
    return float(torch.stack(kls).mean())


@dataclasses.dataclass
class Refinement:
    """What `refine_by_logits` did.

    config: per layer, per head, the patterns it ends with; recall: their recall from the
    search's tables; kl: the final mean KL (nats); tile_fraction: the share of dense causal tiles
    the kernels computed over the calibration prompts with `config` (searched: with the
    searched config); changed: (layer, candidate) of every layer it made cheaper; forwards,
    seconds: the work it took.
    """

    config: list[list[HeadPattern]]
    recall: list[list[float]]
    kl: float
    tile_fraction: float
    searched_tile_fraction: float
    changed: list[tuple[int, HeadPattern]]
    forwards: int
    seconds: float

    def summary(self) -> str:
        return (f"refined against the model's predictions: {len(self.changed)} layers made cheaper, tiles computed "
                f"{self.searched_tile_fraction:.4f} -> {self.tile_fraction:.4f} of dense causal, mean KL "
                f"{self.kl:.4f} nats, {self.forwards} forwards, {self.seconds:.1f} s")


def refine_by_logits(
    model: Any,
    result: Any,
    prompts: Sequence[Any],
    *,
    positions: int = 1,
    kl_tolerance: float = KL_TOLERANCE,
    min_sparse_len: int | None = None,
    exact_masks: bool = False,
    progress: bool = True,
) -> Refinement:
    """Make the layers of `result` (a `search.SearchResult`) cheaper while the model's
    predictions stay within `kl_tolerance` of dense (module docstring).

    Args:
        model: the model `result` was searched for (unpatched).
        prompts: calibration prompts, token id sequences (not evaluation samples).
        positions: the last positions of each prompt whose next-token distributions are compared.
        kl_tolerance: bound on the mean KL(dense || sparse) in nats (>= 0).
        min_sparse_len: `minference_flex.compile`'s option for the sparse forwards (default: the
            shortest prompt's length, so every prompt runs sparse).
        exact_masks: `Options.exact_masks` for the sparse forwards (CPU runs).
    """
    from minference_flex.patch.hf import compile as compile_model
    from minference_flex.patch.hf import restore

    if isinstance(positions, bool) or not isinstance(positions, int) or positions < 1:
        raise ValueError(f"positions must be an int >= 1, got {positions!r}")
    if isinstance(kl_tolerance, bool) or not isinstance(kl_tolerance, (int, float)) or not kl_tolerance >= 0:
        raise ValueError(f"kl_tolerance must be a number >= 0 (nats), got {kl_tolerance!r}")
    ids = _check_prompts(model, prompts, positions)
    sparse_len = min(t.shape[1] for t in ids) if min_sparse_len is None else min_sparse_len
    start = time.perf_counter()
    reference = next_token_log_probs(model, ids, positions)
    candidates = list(result.candidates)
    config = [list(layer) for layer in result.config]
    forwards = len(ids)

    def trial(patterns: list[list[HeadPattern]]) -> tuple[float, int, int]:
        """(mean KL, computed tiles, causal tiles) of the model with `patterns`."""
        nonlocal forwards
        compile_model(model, patterns, min_sparse_len=sparse_len, exact_masks=exact_masks)
        try:
            with count_tiles() as tiles:
                got = next_token_log_probs(model, ids, positions)
            forwards += len(ids)
            return mean_kl(reference, got), tiles.computed, tiles.causal
        finally:
            restore(model)

    kl, computed, causal = trial(config)
    searched_fraction = computed / causal
    changed = []
    for layer, heads in enumerate(config):
        costs = result.candidate_cost[layer]
        layer_cost = [sum(costs[h][c] for h in range(len(heads))) / len(heads) for c in range(len(candidates))]
        present = sum(costs[h][candidates.index(p)] for h, p in enumerate(heads)) / len(heads)
        for c in sorted((c for c in range(len(candidates)) if layer_cost[c] < present), key=lambda c: (layer_cost[c], c)):
            before = config[layer]
            config[layer] = [candidates[c]] * len(heads)
            tried, tried_computed, _ = trial(config)
            if tried <= kl_tolerance and tried_computed < computed:
                kl, computed = tried, tried_computed
                changed.append((layer, candidates[c]))
                break
            config[layer] = before
        if progress:
            kinds = sorted({f"{p.kind} ({p.a}, {p.b})" for p in config[layer]})
            print(f"refine: layer {layer}: {', '.join(kinds)}; KL {kl:.4f}, tiles {computed / causal:.4f}, "
                  f"{forwards} forwards, {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)
    recall = [[result.candidate_recall[layer][head][candidates.index(p)] for head, p in enumerate(patterns)]
              for layer, patterns in enumerate(config)]
    return Refinement(config, recall, kl, computed / causal, searched_fraction, changed, forwards,
                      time.perf_counter() - start)
