"""Offline per-head pattern search: `search(model, calibration) -> SearchResult`.

The model runs once, densely, over a calibration prompt (`probe.dense_forward_with_probe`);
inside each layer's attention the search scores every candidate pattern of every query head of that layer
by attention recall and kernel cost (`recall.candidate_scores`). Only per-head numbers are
kept, so memory is that of one layer's scoring on top of the model's own dense forward.

Cost of a candidate on a head: the fraction of dense causal bs x bs tiles its kernel computes
(`recall.candidate_scores`). Vertical-slash: from the index the kernel would build on this
layer's calibration q/k for that head (`recall.vertical_slash_cost`: the estimated indices the
recall uses, `build_vertical_slash_index`, `head_fractions`), 1.0 above
`DENSE_FALLBACK_FRACTION` where the op runs dense; A-shape and block-sparse: `recall.pattern_cost`.
So costs are per layer, per head, per candidate.

Selection rule, per head: best = the highest recall over the candidates; the head gets the
cheapest candidate (by that head's costs) whose recall is at least best - tolerance (ties:
higher recall, then candidate order).
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

from minference_flex.patterns.base import get_pattern, registered
from minference_flex.patterns.config import (
    A_SHAPE,
    BLOCK_SPARSE,
    VERTICAL_SLASH,
    HeadPattern,
    PatternConfig,
    _parse_head,
    save_pattern_config,
)
from minference_flex.patch import layout
from minference_flex.patch.hf import attention_model_shape
from minference_flex.patch.probe import dense_forward_with_probe
from minference_flex.metrics.recall import candidate_scores

#: MInference's search space: its five vertical-slash budgets, two A-shapes and block-sparse.
DEFAULT_CANDIDATES: tuple[HeadPattern, ...] = (
    HeadPattern(VERTICAL_SLASH, 1000, 6096),
    HeadPattern(VERTICAL_SLASH, 3500, 100),
    HeadPattern(VERTICAL_SLASH, 30, 800),
    HeadPattern(VERTICAL_SLASH, 100, 800),
    HeadPattern(VERTICAL_SLASH, 500, 700),
    HeadPattern(A_SHAPE, 100, 800),
    HeadPattern(A_SHAPE, 128, 4096),
    HeadPattern(BLOCK_SPARSE, 0, 0),
)

def candidate_spec_help() -> str:
    """How to write a candidate of each registered pattern."""
    specs = [get_pattern(name).spec_help or name for name in registered()]
    return ", ".join(specs[:-1]) + " or " + specs[-1] if len(specs) > 1 else specs[0]


def parse_candidate(spec: str) -> HeadPattern:
    """A candidate from text: 'vs:1000,6096', 'a:128,4096', 'bs' (full pattern names work too;
    each registered pattern's `aliases`)."""
    match = re.fullmatch(r"\s*([a-z_-]+)\s*(?::\s*(\d+)\s*,\s*(\d+)\s*)?", spec.lower())
    by_alias = {alias: name for name in registered() for alias in (name, *get_pattern(name).aliases)}
    kind = by_alias.get(match.group(1)) if match else None
    if kind is None:
        raise ValueError(f"cannot read candidate {spec!r}; expected {candidate_spec_help()}")
    if not get_pattern(kind).takes_budgets:
        if match.group(2) is not None:
            raise ValueError(f"candidate {spec!r}: {kind} takes no budgets, write {get_pattern(kind).spec_help.split()[0]!r}")
        return HeadPattern(kind, 0, 0)
    if match.group(2) is None:
        raise ValueError(f"candidate {spec!r}: {kind} needs two budgets; expected {candidate_spec_help()}")
    return _parse_head([kind, int(match.group(2)), int(match.group(3))], f"candidate {spec!r}")


def _check_candidates(candidates: Sequence[Any]) -> list[HeadPattern]:
    if isinstance(candidates, (str, bytes)) or not isinstance(candidates, Sequence) or not candidates:
        raise TypeError(
            "candidates must be a non-empty list of HeadPattern, (kind, a, b) tuples or specs like "
            "'vs:1000,6096', e.g. "
            "minference_flex.DEFAULT_CANDIDATES"
        )
    out: list[HeadPattern] = []
    for i, cand in enumerate(candidates):
        if isinstance(cand, str):
            pat = parse_candidate(cand)
        else:
            pat = _parse_head(list(cand) if isinstance(cand, (list, tuple)) else cand, f"candidates[{i}]")
        if pat not in out:
            out.append(pat)
    return out


#: Query tiles a calibration prompt must span for the search to tell patterns apart.
MIN_CALIBRATION_TILES = 4

#: Chosen recall under which `SearchResult.summary` warns: recall is a rough guide to accuracy
#: (perf/RESULTS.md, "Accuracy"), so low-recall heads are worth a check against the model's
#: predictions (`minference_flex.pattern_search.refine`).
LOW_RECALL = 0.95


def select_patterns(recall: torch.Tensor, costs: Any, tolerance: float) -> list[int]:
    """Per head, the index of the chosen candidate (module docstring rule).

    recall: [H, C]. costs: [H, C] (each head's own costs, as `candidate_scores` gives them) or
    [C] (the same for every head, e.g. `pattern_cost` of each candidate).
    """
    recall = torch.as_tensor(recall)
    cost = torch.as_tensor(costs, dtype=torch.float64)
    if recall.dim() != 2 or cost.dim() not in (1, 2) or cost.shape[-1] != recall.shape[1] or (
        cost.dim() == 2 and cost.shape[0] != recall.shape[0]
    ):
        raise ValueError(
            f"recall must be [H, C] and costs [H, C] or [C], got {tuple(recall.shape)} and {tuple(cost.shape)}"
        )
    cost = cost.expand(recall.shape[0], -1)
    chosen = []
    for row, head_cost in zip(recall.tolist(), cost.tolist()):
        best = max(row)
        ok = [c for c, r in enumerate(row) if r >= best - tolerance]
        chosen.append(min(ok, key=lambda c: (head_cost[c], -row[c], c)))
    return chosen


@dataclasses.dataclass
class SearchResult:
    """What `search` found.

    config: per layer, per query head, the chosen HeadPattern (pass it to
        `minference_flex.compile(model, pattern_config=result.config)`).
    recall, cost: [layers][heads] recall and cost of the chosen pattern.
    candidates: the candidates scored; candidate_recall: [layers][heads][candidates].
    candidate_cost: [layers][heads][candidates], the fraction of dense causal tiles the kernel
        computes (module docstring: vertical-slash from that head's real index on the
        calibration prompt, 1.0 past the dense fallback; A-shape, block-sparse `pattern_cost`).
    seq_len: calibration tokens; seconds: wall time; layer_seconds: per layer, scoring only.
    """

    config: PatternConfig
    recall: list[list[float]]
    cost: list[list[float]]
    candidates: list[HeadPattern]
    candidate_recall: list[list[list[float]]]
    candidate_cost: list[list[list[float]]]
    seq_len: int
    seconds: float
    layer_seconds: list[float]

    def save(self, path: str | os.PathLike) -> None:
        """Write MInference's format; each head's score is the recall of its pattern."""
        scores = [[round(r, 6) for r in layer] for layer in self.recall]
        save_pattern_config(self.config, path, scores=scores)

    def mean_candidate_cost(self) -> list[float]:
        """Per candidate, its cost averaged over every layer and head: [candidates]."""
        rows = [head for layer in self.candidate_cost for head in layer]
        return [sum(col) / len(col) for col in zip(*rows)]

    def summary(self) -> str:
        """One line per layer: pattern counts, mean recall and mean cost of the chosen patterns."""
        lines = []
        for i, (layer, rec, cost) in enumerate(zip(self.config, self.recall, self.cost)):
            counts = Counter(p.kind for p in layer)
            kinds = (VERTICAL_SLASH, A_SHAPE, BLOCK_SPARSE)
            parts = ", ".join(f"{kind} {counts[kind]}" for kind in kinds if counts[kind])
            lines.append(
                f"layer {i}: {parts}; mean recall {sum(rec) / len(rec):.4f}, mean cost {sum(cost) / len(cost):.4f}"
            )
        every = [r for layer in self.recall for r in layer]
        costs = [c for layer in self.cost for c in layer]
        lines.append(
            f"all {len(self.config)} layers: mean recall {sum(every) / len(every):.4f}, "
            f"mean cost {sum(costs) / len(costs):.4f} (of dense causal tiles), "
            f"{self.seq_len} tokens, {self.seconds:.1f} s"
        )
        low = self.low_recall_heads()
        if low:
            lines.append(
                f"warning: {len(low)} heads keep less than {LOW_RECALL:.0%} of their attention with the chosen "
                f"pattern (lowest {min(self.recall[i][h] for i, h in low):.3f}); their patterns can cost "
                "accuracy: lower --tolerance, or add a denser candidate, e.g. --budget vs:1000,6096 "
                "(dense-equivalent on short prompts)"
            )
        return "\n".join(lines)

    def low_recall_heads(self, threshold: float | None = None) -> list[tuple[int, int]]:
        """(layer, head) of every head whose chosen pattern keeps less than `threshold`
        (default LOW_RECALL) of its dense attention mass."""
        threshold = LOW_RECALL if threshold is None else threshold
        return [(i, h) for i, layer in enumerate(self.recall) for h, r in enumerate(layer) if r < threshold]


def synthetic_prompt(vocab_size: int, length: int, seed: int = 0) -> torch.Tensor:
    """Seeded random token ids [length] in [0, vocab_size) in which 16 segments of the first half
    are repeated in the second half, so induction / retrieval attention has something to find."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (length,), generator=gen)
    seg = max(8, length // 64)
    if length >= 4 * seg:
        half = length // 2
        for _ in range(16):
            src = int(torch.randint(0, half - seg + 1, (1,), generator=gen))
            dst = int(torch.randint(half, length - seg + 1, (1,), generator=gen))
            ids[dst : dst + seg] = ids[src : src + seg].clone()
    return ids


def calibration_ids(
    model: Any, calibration: Any = None, length: int | None = None, seed: int = 0, tokenizer: Any = None
) -> torch.Tensor:
    """The calibration prompt `search` runs for these arguments (see `search`): [1, S] token ids
    on the model's input device."""
    return _calibration_ids(model, calibration, length, seed, tokenizer, layout.input_device(model))


def _calibration_ids(
    model: Any, calibration: Any, length: int | None, seed: int, tokenizer: Any, device: torch.device
) -> torch.Tensor:
    vocab = model.get_input_embeddings().num_embeddings
    if calibration is None:
        if length is None:
            length = 32768 if device.type == "cuda" else 4096
        return synthetic_prompt(vocab, length, seed)[None].to(device)
    if isinstance(calibration, (str, os.PathLike)):
        path = os.fspath(calibration)
        if not os.path.isfile(path):
            raise ValueError(f"calibration file not found: {path}")
        if tokenizer is None:
            tokenizer = _tokenizer_for(model, path)
        with open(path, encoding="utf-8") as f:
            ids = tokenizer(f.read(), add_special_tokens=True)["input_ids"]
        origin = f"calibration text {path}"
    else:
        ids = calibration
        origin = "calibration"
    ids = torch.as_tensor(ids)
    if ids.dim() == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.dim() != 1 or ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.numel() == 0:
        raise TypeError(
            f"calibration must be None, a text file path, or a non-empty list / 1-D tensor of token "
            f"ids, got {'shape ' + str(tuple(ids.shape)) if ids.numel() else 'nothing'} of {ids.dtype}"
        )
    if int(ids.min()) < 0 or int(ids.max()) >= vocab:
        raise ValueError(f"{origin}: token ids must be in [0, {vocab}) (the model's vocabulary)")
    if length is not None:
        if ids.numel() < length:
            raise ValueError(
                f"{origin} has {ids.numel()} tokens, fewer than length={length}; pass a longer "
                f"prompt or a smaller length"
            )
        ids = ids[:length]
    return ids.long()[None].to(device)


def _tokenizer_for(model: Any, path: str) -> Any:
    name = getattr(model.config, "_name_or_path", "") or getattr(model, "name_or_path", "")
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(name)
    except Exception as exc:  # noqa: BLE001 - any failure means: no usable tokenizer there
        raise ValueError(
            f"calibration {path} is text but no tokenizer loads from the model's path {name!r} ({exc}); "
            f"save the tokenizer next to the model, pass tokenizer=..., or pass token ids instead"
        ) from None


def _scoring_dtype(t: torch.Tensor) -> torch.Tensor:
    """The estimators take bf16/fp16 on CUDA and fp32/fp16 on CPU."""
    if t.is_cuda and t.dtype not in (torch.bfloat16, torch.float16):
        return t.to(torch.bfloat16)
    if not t.is_cuda and t.dtype not in (torch.float32, torch.float16):
        return t.float()
    return t


@dataclasses.dataclass
class _LayerScorer:
    """Per-layer recall and cost of every candidate, filled by `score_layer` in the dense forward."""

    candidates: list[HeadPattern]
    num_layers: int
    num_tiles: int
    last_q: int
    block_size: int
    progress: bool
    start: float
    recall: dict[int, torch.Tensor] = dataclasses.field(default_factory=dict)
    cost: dict[int, torch.Tensor] = dataclasses.field(default_factory=dict)
    layer_seconds: dict[int, float] = dataclasses.field(default_factory=dict)

    def score_layer(self, layer: int, query: torch.Tensor, key: torch.Tensor, scale: float) -> None:
        """Score every candidate for this layer's heads (a `probe.dense_forward_with_probe` callback)."""
        tic = time.perf_counter()
        heads = query.shape[1]
        q, k = _scoring_dtype(query), _scoring_dtype(key)
        scores = candidate_scores(
            q, k, [self.candidates] * heads, scale,
            block_size=self.block_size, num_tiles=self.num_tiles, last_q=self.last_q,
        )
        self.recall[layer] = scores.recall.mean(0).cpu()
        self.cost[layer] = scores.cost.mean(0).cpu()
        self.layer_seconds[layer] = time.perf_counter() - tic
        if self.progress:
            done = len(self.recall)
            elapsed = time.perf_counter() - self.start
            left = elapsed / done * (self.num_layers - done)
            print(
                f"search: layer {done}/{self.num_layers} done, elapsed {elapsed:.1f}s, ~{left:.1f}s left",
                file=sys.stderr, flush=True,
            )


def search(
    model: Any,
    calibration: str | os.PathLike | Sequence[int] | torch.Tensor | None = None,
    *,
    length: int | None = None,
    candidates: Sequence[HeadPattern] = DEFAULT_CANDIDATES,
    tolerance: float = 0.02,
    num_tiles: int = 32,
    last_q: int = 64,
    block_size: int = 64,
    seed: int = 0,
    tokenizer: Any = None,
    progress: bool = True,
) -> SearchResult:
    """Pick each head's pattern for `model` from `candidates` on a calibration prompt.

    Args:
        model: a Hugging Face causal LM whose attention goes through `AttentionInterface`.
        calibration: None (a seeded synthetic prompt of `length` tokens, see `synthetic_prompt`),
            a text file (tokenized with `tokenizer` or the one saved next to the model), or
            token ids (a list or 1-D tensor), cut to `length` if given.
        length: calibration tokens; default 32768 on CUDA, 4096 on CPU for the synthetic prompt.
        candidates: HeadPatterns to choose from (default `DEFAULT_CANDIDATES`).
        tolerance: recall a head may give up for a cheaper pattern (module docstring).
        num_tiles, last_q, block_size: see `recall.candidate_scores`.
        seed: seed of the synthetic prompt; the same model, prompt and seed give the same result.
        progress: print per-layer progress and the summary to stderr.

    Measure: attention recall, the mean over sampled query rows of the dense attention
    probability the head's sparse pattern keeps (`recall.attention_recall`). Cost: per head, the
    fraction of dense causal tiles its kernel computes, from the real vertical-slash index on
    this prompt (`recall.candidate_scores`, module docstring).
    """
    num_layers, num_heads = attention_model_shape(model, "the search")
    cands = _check_candidates(candidates)
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must be a number in [0, 1), got {tolerance!r}")
    if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 1):
        raise ValueError(f"length must be an int >= 1, got {length!r}")
    device = layout.input_device(model)
    ids = _calibration_ids(model, calibration, length, seed, tokenizer, device)
    seq_len = ids.shape[1]
    if seq_len < MIN_CALIBRATION_TILES * block_size:
        raise ValueError(
            f"the calibration prompt has {seq_len} tokens, too few to judge a pattern (below "
            f"{MIN_CALIBRATION_TILES} tiles of {block_size} every candidate keeps nearly all attention); pass at "
            f"least {MIN_CALIBRATION_TILES * block_size} tokens, and for budgets made for long prompts the length "
            f"the model will serve"
        )

    start = time.perf_counter()
    scorer = _LayerScorer(cands, num_layers, num_tiles, last_q, block_size, progress, start)
    if progress:
        print(f"search: {num_layers} layers x {num_heads} heads, {len(cands)} candidates, {seq_len} tokens",
              file=sys.stderr, flush=True)
    dense_forward_with_probe(model, ids, scorer.score_layer)
    if sorted(scorer.recall) != list(range(num_layers)):
        raise ValueError(
            f"captured {len(scorer.recall)} of {num_layers} layers: {type(model).__name__} does not call "
            "its attention function once per layer with module.layer_idx"
        )

    config, recall, cost, table, cost_table = [], [], [], [], []
    for layer in range(num_layers):
        scores, costs = scorer.recall[layer], scorer.cost[layer]
        chosen = select_patterns(scores, costs, tolerance)
        config.append([cands[c] for c in chosen])
        recall.append([float(scores[h, c]) for h, c in enumerate(chosen)])
        cost.append([float(costs[h, c]) for h, c in enumerate(chosen)])
        table.append(scores.tolist())
        cost_table.append(costs.tolist())
    result = SearchResult(
        config=config, recall=recall, cost=cost, candidates=cands, candidate_recall=table,
        candidate_cost=cost_table, seq_len=seq_len, seconds=time.perf_counter() - start,
        layer_seconds=[scorer.layer_seconds[i] for i in range(num_layers)],
    )
    if progress:
        print(result.summary(), file=sys.stderr, flush=True)
    return result
