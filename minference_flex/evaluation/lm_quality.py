"""Language-model quality of sparse pre-fill on real text: perplexity and KL against dense.

For held-out text of S tokens (`text_tasks.heldout_ids`), one forward per text and method:
the next-token distributions at the last `positions` positions, each conditioned on the whole
text before it. Per method: perplexity of those positions' true next tokens, the mean over
texts and positions of KL(dense || method) in nats, and the share of dense causal 64 x 64
tiles the kernels computed (`tile_count`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from minference_flex.patch.hf import compile as compile_model, restore
from minference_flex.pattern_search.refine import mean_kl, next_token_log_probs
from minference_flex.metrics.tile_count import count_tiles

#: Positions at the end of each text that are scored.
LM_POSITIONS = 1024


def _nll(log_probs: torch.Tensor, ids: torch.Tensor, positions: int) -> torch.Tensor:
    """Summed negative log-likelihood of the true next tokens: log_probs [1, P, V] are the
    predictions at the last P positions of ids [1, S], whose targets are ids shifted by one
    (the very last position has none)."""
    targets = ids[0, -positions + 1 :] if positions > 1 else ids[0, :0]
    picked = log_probs[0, :-1].gather(-1, targets[:, None].to(log_probs.device))
    return -picked.sum()


def lm_quality(
    model: Any, texts: Sequence[torch.Tensor], methods: dict[str, Any], positions: int = LM_POSITIONS,
    compile_options: dict[str, int] | None = None,
) -> list[dict]:
    """Rows {"method", "perplexity", "kl_vs_dense", "tile_fraction", "texts", "positions"}.

    texts: [1, S] token ids on the model's device; methods: name -> pattern config (None: the
    model's own dense attention, which every KL is measured against); compile_options: for
    `minference_flex.compile` (default: every call sparse)."""
    if not texts or any(t.dim() != 2 or t.shape[0] != 1 or t.shape[1] <= positions for t in texts):
        raise ValueError(f"texts must be [1, S] token ids with S > positions={positions}")
    length = min(t.shape[1] for t in texts)
    options = compile_options or {"min_sparse_len": min(1024, length), "min_chunk_len": min(1024, length)}
    reference = next_token_log_probs(model, list(texts), positions)
    rows = []
    for name, config in methods.items():
        if config is None:
            got, fraction = reference, 1.0
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                compile_model(model, config, **options)
            try:
                with count_tiles() as tiles:
                    got = next_token_log_probs(model, list(texts), positions)
                fraction = tiles.fraction
            finally:
                restore(model)
        nll = sum(float(_nll(lp, ids, positions)) for lp, ids in zip(got, texts))
        count = len(texts) * (positions - 1)
        rows.append({"method": name, "perplexity": math.exp(nll / count), "kl_vs_dense": mean_kl(reference, got),
                     "tile_fraction": fraction, "texts": len(texts), "positions": positions})
    return rows
