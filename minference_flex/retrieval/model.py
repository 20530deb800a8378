"""The small retrieval model trained here (`minference_flex.retrieval.train`) that ships with the package.

It answers the tasks of `minference_flex.retrieval.tasks` with the built-in word tokenizer; the demo and
`python -m minference_flex eval` run on it. `MODEL_DIR` holds its safetensors, config, model card,
training log and a pattern config searched for it (`pattern_config.json`), once trained.
"""

from __future__ import annotations

import os

import torch

from minference_flex.retrieval.tasks import TASKS

MODEL_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "retrieval_llama")
PATTERN_CONFIG = "pattern_config.json"


def shipped_model_available(path: str | None = None) -> bool:
    path = path or MODEL_DIR
    return os.path.exists(os.path.join(path, "model.safetensors"))


def load_retrieval_model(path: str | None = None, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """The trained retrieval model (LlamaForCausalLM) from `path` (default: the shipped one),
    in eval mode, with SDPA attention. dtype defaults to fp32 on CPU and bf16 on CUDA."""
    from transformers import LlamaForCausalLM

    path = path or MODEL_DIR
    if not shipped_model_available(path):
        raise FileNotFoundError(
            f"no trained retrieval model in {path}: train one with "
            f"`python -m minference_flex.retrieval.train --out {path}` (on a GPU: about 8 minutes)"
        )
    device = torch.device(device)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    model = LlamaForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
    return model.to(device).eval()


def trained_length(path: str | None = None) -> int | None:
    """The longest prompt the model in `path` was trained on (from its train_log.json)."""
    import json

    log = os.path.join(path or MODEL_DIR, "train_log.json")
    if not os.path.exists(log):
        return None
    with open(log) as f:
        stages = json.load(f)["preset"]["stages"]
    return max(int(stage[0]) for stage in stages)


def searched_config_path(path: str | None = None) -> str | None:
    """The pattern config searched for the model in `path`, if one was saved next to it."""
    config = os.path.join(path or MODEL_DIR, PATTERN_CONFIG)
    return config if os.path.exists(config) else None


@torch.no_grad()
def answer(model, sample, chunk: int | None = None) -> list[int]:
    """Greedy answer of `model` to a `tasks.Sample`: len(sample.answer) token ids after the prompt.

    chunk: pre-fill the prompt in chunks of this many tokens over the KV cache (generate's
    `prefill_chunk_size`; a prompt of at most `chunk` tokens is one call); None: one call."""
    from minference_flex.patch.layout import input_device
    from minference_flex.retrieval.tasks import TOKENIZER

    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"chunk must be a positive int of tokens (or None: no chunking), got {chunk!r}")
    device = input_device(model)
    ids = torch.tensor([sample.prompt], device=device)
    chunking = {} if chunk is None else {"prefill_chunk_size": chunk}
    out = model.generate(
        ids, max_new_tokens=len(sample.answer), do_sample=False, pad_token_id=TOKENIZER.pad_id,
        attention_mask=torch.ones_like(ids), **chunking,
    )
    return out[0, ids.shape[1]:].tolist()


class _RetrievalTasks:
    """The `task_set.TaskSet` of the retrieval model: `tasks.make_sample`, scored by
    `tasks.exact_match` on the greedy answer's digit tokens."""

    tasks = TASKS

    def sample(self, task: str, length: int, seed: int, depth: float | None = None):
        from minference_flex.retrieval.tasks import make_sample

        return make_sample(task, length, seed, depth)

    def correct(self, model, sample, chunk: int | None = None) -> bool:
        from minference_flex.retrieval.tasks import exact_match

        return exact_match(answer(model, sample, chunk), sample.answer)


RETRIEVAL_TASKS = _RetrievalTasks()
