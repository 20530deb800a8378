"""The sparse patterns behind one interface (`base.SparsePattern`): one module per kind
(`vertical_slash`, `a_shape`, `block_sparse`), registered on import; `prefill.sparse_prefill`
runs each head's pattern in a layer; `config` reads MInference's per-head pattern files;
`events` carries one `AttentionCall` per pattern group to whoever measures (tile counts)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

# registers them, in MInference's order (isort: skip)
from minference_flex.patterns import vertical_slash  # noqa: F401, I001
from minference_flex.patterns import a_shape  # noqa: F401
from minference_flex.patterns import block_sparse  # noqa: F401
from minference_flex.patterns.base import GroupInputs, SparsePattern, get_pattern, register, registered, unregister


@contextlib.contextmanager
def override_estimator(name: str, estimator: Callable[..., Any]) -> Iterator[None]:
    """Run pattern `name` with another estimator inside the block (e.g. planted indices for a
    structured benchmark), with the signature of the pattern's own `estimator` attribute:
    vertical-slash (q, k, verticals, slashes, last_q, scale) -> (v_idx, s_idx); block-sparse
    (q, k, topk, block_size) -> (tiles, count). Eager calls only: a graph torch.compile traced
    before keeps the estimator it traced."""
    pattern = get_pattern(name)
    if not hasattr(pattern, "estimator"):
        raise ValueError(f"pattern {name!r} estimates nothing (its index comes from its budgets alone)")
    previous, pattern.estimator = pattern.estimator, estimator
    try:
        yield
    finally:
        pattern.estimator = previous


__all__ = ["GroupInputs", "SparsePattern", "get_pattern", "override_estimator", "register", "registered", "unregister"]
