"""Per-head pattern configs in MInference's file format: reading, validating, looking up.

The format is a JSON list over layers of {"<head>": [pattern, a, b, score]}:
- "vertical_and_slash": a = vertical size, b = slash size;
- "stream_llm": a = sink tokens, b = local window (A-shape);
- "block_sparse": a and b are ignored (MInference keeps the top 100 tiles of 64).
`score` is search bookkeeping and is not used.
"""

from __future__ import annotations

import json
import os
import warnings
from importlib import resources
from typing import NamedTuple, Union

from minference_flex.patterns.a_shape import A_SHAPE  # noqa: F401  (re-exported, as the names below)
from minference_flex.patterns.base import get_pattern, registered
from minference_flex.patterns.block_sparse import BLOCK_SPARSE, BLOCK_SPARSE_TOPK  # noqa: F401  (re-exported)
from minference_flex.patterns.vertical_slash import VERTICAL_SLASH

#: What every head of a model without a shipped config gets (MInference's default).
DEFAULT_PATTERN = (VERTICAL_SLASH, 1000, 6096)
SEARCH_COMMAND = "python -m minference_flex search --model PATH --out config.json"


class HeadPattern(NamedTuple):
    """One head's pattern: kind, a registered pattern's config name (`patterns.registered()`), and its two budgets (see the module docstring)."""

    kind: str
    a: int
    b: int


#: Per layer, per query head.
PatternConfig = list[list[HeadPattern]]
ConfigSource = Union[str, os.PathLike, list, None]


class PatternConfigError(ValueError):
    """A pattern config that does not fit the format or the model."""


def _configs_dir():
    return resources.files("minference_flex") / "configs"


def shipped_config_path(model_name: str) -> str | None:
    """The shipped config file for a Hugging Face model name or a local path, if any.

    Matches `model_index.json` keys exactly, then by the last path component
    (case-insensitive), so `/models/Llama-3-8B-Instruct-262k` finds the Gradient config.
    """
    index = json.loads((_configs_dir() / "model_index.json").read_text())
    name = (model_name or "").rstrip("/")
    if name in index:
        return str(_configs_dir() / index[name])
    base = os.path.basename(name).lower()
    for key, file in index.items():
        if key.split("/")[-1].lower() == base:
            return str(_configs_dir() / file)
    return None


def _parse_head(raw: object, where: str) -> HeadPattern:
    if not isinstance(raw, (list, tuple)) or len(raw) < 3:
        raise PatternConfigError(f"{where}: expected [pattern, a, b, score], got {raw!r}")
    kind, a, b = raw[0], raw[1], raw[2]
    if kind not in registered():
        raise PatternConfigError(f"{where}: unknown pattern {kind!r}; expected one of {', '.join(registered())}")
    for name, value in (("a", a), ("b", b)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise PatternConfigError(f"{where}: budget {name} must be an integer, got {value!r}")
        if value < 0:
            raise PatternConfigError(f"{where}: budget {name} must be >= 0, got {value}")
    problem = get_pattern(kind).check_budgets(a, b)
    if problem:
        raise PatternConfigError(f"{where}: {problem}")
    return HeadPattern(kind, a, b)


def parse_pattern_config(raw: object, num_layers: int, num_heads: int, origin: str = "config") -> PatternConfig:
    """Validate a parsed config against the model's layer and query-head counts.

    Each layer is MInference's {head: [pattern, a, b, score]} object, or a list with one
    HeadPattern (or [pattern, a, b]) per query head, as `search(...).config` gives."""
    if not isinstance(raw, list):
        raise PatternConfigError(f"{origin}: expected a JSON list over layers, got {type(raw).__name__}")
    if len(raw) != num_layers:
        raise PatternConfigError(
            f"{origin}: has {len(raw)} layers but the model has {num_layers}; is it the config of another model?"
        )
    layers: PatternConfig = []
    for layer_idx, layer in enumerate(raw):
        where = f"{origin}, layer {layer_idx}"
        if isinstance(layer, (list, tuple)) and not (layer and isinstance(layer[0], str)):
            if len(layer) != num_heads:
                raise PatternConfigError(f"{where}: has {len(layer)} heads but the model has {num_heads} query heads")
            layers.append([_parse_head(tuple(p), f"{where}, head {h}") for h, p in enumerate(layer)])
            continue
        if not isinstance(layer, dict):
            raise PatternConfigError(f"{where}: expected an object {{head: [pattern, a, b, score]}}, got {type(layer).__name__}")
        expected = {str(h) for h in range(num_heads)}
        keys = {str(h) for h in layer}
        if keys != expected:
            missing = sorted(expected - keys, key=int)[:5]
            extra = sorted(keys - expected)[:5]
            raise PatternConfigError(
                f"{where}: has {len(layer)} heads but the model has {num_heads} query heads"
                + (f" (missing {missing})" if missing else "")
                + (f" (unexpected {extra})" if extra else "")
            )
        by_head = {str(h): v for h, v in layer.items()}
        layers.append([_parse_head(by_head[str(h)], f"{where}, head {h}") for h in range(num_heads)])
    return layers


def load_pattern_config(
    source: ConfigSource, num_layers: int, num_heads: int, model_name: str = ""
) -> PatternConfig:
    """Read a config from a path, a parsed list, or (None) the shipped config of `model_name`.

    A model without a shipped config gets DEFAULT_PATTERN on every head and a warning that
    names the search command.
    """
    if source is None:
        path = shipped_config_path(model_name)
        if path is None:
            warnings.warn(
                f"minference_flex: no pattern config ships for {model_name or 'this model'}; every head "
                f"uses {DEFAULT_PATTERN[0]} {DEFAULT_PATTERN[1:]}. Find one with `{SEARCH_COMMAND}`.",
                stacklevel=3,
            )
            return [[HeadPattern(*DEFAULT_PATTERN)] * num_heads for _ in range(num_layers)]
        source = path
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isdir(path):
            raise PatternConfigError(f"pattern config {path} is a directory; pass the JSON file in it "
                                     f"(a model folder's is pattern_config.json)")
        if not os.path.isfile(path):
            raise PatternConfigError(f"pattern config file not found: {path}")
        try:
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
        except json.JSONDecodeError as exc:
            raise PatternConfigError(f"{path}: not valid JSON ({exc})") from exc
        except UnicodeDecodeError:
            raise PatternConfigError(f"{path}: not a text file (not UTF-8); pass a pattern config, a JSON list "
                                     f"over layers of {{head: [pattern, a, b, score]}}") from None
        return parse_pattern_config(raw, num_layers, num_heads, origin=path)
    return parse_pattern_config(source, num_layers, num_heads)


def save_pattern_config(config: PatternConfig, path: str | os.PathLike, scores: list[list[float]] | None = None) -> None:
    """Write a config in MInference's format (score 0 where none is given).

    config: per layer, one HeadPattern (or [pattern, a, b]) per query head, validated as
    `load_pattern_config` would read it back; scores: the same nesting of numbers, or None."""
    if not isinstance(config, (list, tuple)) or not config or not isinstance(config[0], (list, tuple, dict)):
        raise PatternConfigError(f"save_pattern_config: expected a list over layers of per-head patterns, got {config!r:.80}")
    config = parse_pattern_config(list(config), len(config), len(config[0]), origin="save_pattern_config")
    if scores is not None and [len(row) for row in scores] != [len(layer) for layer in config]:
        raise PatternConfigError("save_pattern_config: scores must have one number per head of each layer, "
                                 "as the config has")
    out = []
    for layer_idx, layer in enumerate(config):
        row = {}
        for h, pat in enumerate(layer):
            score = scores[layer_idx][h] if scores is not None else 0
            row[str(h)] = [pat.kind, pat.a, pat.b, score]
        out.append(row)
    with open(path, "w") as f:
        json.dump(out, f)
