"""What an accuracy evaluation needs from a family of tasks: make a sample, score a model on it.

`minference_flex.evaluation.evaluate` and the demo run over a `TaskSet`: the retrieval model's
(`retrieval_model.RETRIEVAL_TASKS`, word-level synthetic haystacks) or a real LLM's
(`text_tasks.TextTaskSet`, needles in a real novel with the model's own tokenizer).
"""

from __future__ import annotations

from typing import Any, Protocol


class TaskSet(Protocol):
    """tasks: the task names it makes; sample(task, length, seed, depth): one sample whose
    `prompt` is a list of `length` token ids (depth: the asked needle's place, a fraction of
    the prompt, or None); correct(model, sample, chunk): whether the model's greedy answer is
    right (chunk: pre-fill in chunks of that many tokens over the KV cache, None: one call)."""

    tasks: tuple[str, ...]

    def sample(self, task: str, length: int, seed: int, depth: float | None = None) -> Any: ...

    def correct(self, model: Any, sample: Any, chunk: int | None = None) -> bool: ...
