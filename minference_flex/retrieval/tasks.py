"""RULER-style synthetic long-context tasks with a built-in word vocabulary (no downloads).

Tasks (each sample: a prompt of exactly `length` tokens and a digit answer):
- `passkey`: a pass key of 5 digits hidden in a noise haystack;
- `needle`: one "special magic number" for a key word (7 digits) in the haystack;
- `multikey`: four needles with different key words, one is asked for;
- `kv`: the whole context is "key K value V ." records (6-digit keys and values), one is asked for.

The haystack is RULER's noise: sentences drawn at random from a few fixed ones. Numbers are
written one digit per token. Scoring is exact match on the answer's digits. Every sample is a
function of (task, length, seed) alone, and of the asked needle's depth where one is given
(needle-in-a-haystack sweeps).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

TASKS = ("passkey", "needle", "multikey", "kv")

_NOISE = (
    "the grass is green .",
    "the sky is blue .",
    "the sun is yellow .",
    "here we go .",
    "there and back again .",
)
_KEY_WORDS = (
    "apple river stone cloud tiger lemon violin candle garden rocket marble falcon copper "
    "meadow harbor pencil canyon orchid silver thunder willow lantern pepper glacier"
).split()
_TEMPLATE_WORDS = (
    "there is an important info hidden inside a lot of irrelevant text find it and memorize "
    "them i will quiz you about the information pass key remember what one special magic "
    "numbers number for mentioned in provided value records below"
).split()
_SPECIALS = ("<pad>", "<bos>", "<eos>")
_TOKEN = re.compile(r"\d|[a-z]+|[.,:?]")


class WordTokenizer:
    """Word-level tokenizer over the tasks' built-in vocabulary; digits are single tokens.

    `encode(text)` lower-cases and splits into words, digits and punctuation; unknown words
    raise ValueError. `decode(ids)` joins words by spaces and digits of a number together.
    """

    def __init__(self) -> None:
        words = set(_TEMPLATE_WORDS) | set(_KEY_WORDS) | {w for s in _NOISE for w in s.split()}
        words |= {"key", "value", "is", "the", "of", "."}
        self.vocab: list[str] = list(_SPECIALS) + [str(d) for d in range(10)] + [".", ",", ":", "?"]
        self.vocab += sorted(words - set(self.vocab))
        self.ids = {w: i for i, w in enumerate(self.vocab)}
        self.pad_id, self.bos_id, self.eos_id = (self.ids[s] for s in _SPECIALS)

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        out = []
        for tok in _TOKEN.findall(text.lower()):
            if tok not in self.ids:
                raise ValueError(f"word {tok!r} is not in the tasks' built-in vocabulary")
            out.append(self.ids[tok])
        return out

    def decode(self, ids: list[int]) -> str:
        text = ""
        for i in ids:
            tok = self.vocab[int(i)]
            if tok in _SPECIALS:
                continue
            glue = text == "" or tok in ".,:?" or (tok.isdigit() and text[-1].isdigit())
            text += tok if glue else " " + tok
        return text


TOKENIZER = WordTokenizer()


@dataclass(frozen=True)
class Sample:
    """prompt: token ids (starting with <bos>, `length` in all); answer: the digit token ids."""

    task: str
    length: int
    prompt: list[int]
    answer: list[int]
    depth: float  # where the asked needle sits, as a fraction of the context


def _number(rng: random.Random, digits: int) -> str:
    return " ".join(str(rng.randrange(10)) for _ in range(digits))


def _haystack(rng: random.Random, tokens: int) -> list[list[int]]:
    """Noise sentences totalling at least `tokens` tokens."""
    out, total = [], 0
    while total < tokens:
        sentence = TOKENIZER.encode(rng.choice(_NOISE))
        out.append(sentence)
        total += len(sentence)
    return out


def _nearest_slot(
    sentences: list[list[int]], others: list[tuple[int, int]], needles: list[list[int]], start: int, target: float
) -> int:
    """The sentence slot (0..len(sentences)) where needle 0 starts nearest `target`, placed
    before the `others` (slot, needle) sharing its slot; `start`: where slot 0 begins."""
    best, best_gap = 0, float("inf")
    position = start
    for slot in range(len(sentences) + 1):
        here = position + sum(len(needles[n]) for s, n in others if s < slot)
        if abs(here - target) < best_gap:
            best, best_gap = slot, abs(here - target)
        if slot < len(sentences):
            position += len(sentences[slot])
    return best


def weave_needles(
    rng: random.Random, sentences: list[list[int]], needles: list[list[int]], start: int,
    depth: float | None = None, length: int | None = None,
) -> tuple[list[int], list[int]]:
    """Insert the needles between haystack sentences at random slots (needle 0 at the slot
    nearest `depth` x `length` when depth is given; the others keep their random slots).

    sentences: token ids per sentence; start: the position of the first haystack token in
    the whole prompt. Returns (body tokens, start position of each needle in the prompt)."""
    slots = sorted(rng.randrange(len(sentences) + 1) for _ in needles)
    order = list(range(len(needles)))
    rng.shuffle(order)
    body, starts = [], [0] * len(needles)
    pending = list(zip(slots, order))
    if depth is not None:
        others = [(slot, n) for slot, n in pending if n != 0]
        asked = _nearest_slot(sentences, others, needles, start, depth * length)
        pending = sorted(others + [(asked, 0)], key=lambda item: (item[0], item[1] != 0))
    for i, sentence in enumerate(sentences + [[]]):
        while pending and pending[0][0] == i:
            _, n = pending.pop(0)
            starts[n] = start + len(body)
            body += needles[n]
        body += sentence
    return body, starts


def _with_needles(
    rng: random.Random, prefix: list[int], needles: list[list[int]], question: list[int], length: int,
    depth: float | None = None,
) -> tuple[list[int], list[int]]:
    """Fill the haystack to exactly `length` tokens around needles at random sentence depths
    (needle 0 at the slot nearest `depth` x length, when given); returns (prompt, start
    position of each needle)."""
    room = length - 1 - len(prefix) - len(question) - sum(map(len, needles))
    if room < 0:
        raise ValueError(f"length {length} is too short for this task; use at least {length - room}")
    sentences = _haystack(rng, room)
    cut = sum(map(len, sentences)) - room  # trim the last sentence so the total is exact
    if cut:
        sentences[-1] = sentences[-1][: len(sentences[-1]) - cut]
    body, starts = weave_needles(rng, sentences, needles, 1 + len(prefix), depth, length)
    prompt = [TOKENIZER.bos_id] + prefix + body + question
    assert len(prompt) == length
    return prompt, starts


_INTRO = (
    "there is an important info hidden inside a lot of irrelevant text . find it and memorize "
    "them . i will quiz you about the important information there ."
)


def make_sample(task: str, length: int, seed: int, depth: float | None = None) -> Sample:
    """One sample of `task` (see TASKS) with a prompt of exactly `length` tokens.

    depth: where the asked needle goes, as a fraction (0..1) of the prompt: it starts at the
    sentence boundary nearest depth x length (Sample.depth says where it landed; the prompt's
    intro and question bound it). The other needles and the haystack are the same random
    draws as without it; None places it at random (the samples of before this option). Not
    for kv, whose records fill the context.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if not isinstance(length, int) or length < 64:
        raise ValueError(f"length must be an int >= 64 tokens, got {length!r}")
    if depth is not None and not (isinstance(depth, (int, float)) and 0.0 <= depth <= 1.0):
        raise ValueError(f"depth must be a fraction in [0, 1] of the prompt (or None: random), got {depth!r}")
    if depth is not None and task == "kv":
        raise ValueError("depth does not apply to kv (its records fill the context); use passkey, needle or multikey")
    rng = random.Random(f"{task}:{length}:{seed}")
    enc = TOKENIZER.encode
    if task == "passkey":
        key = _number(rng, 5)
        needles = [enc(f"the pass key is {key} . remember it . {key} is the pass key .")]
        question = enc("what is the pass key ? the pass key is")
        answer, prefix = enc(key), enc(_INTRO)
    elif task in ("needle", "multikey"):
        words = rng.sample(_KEY_WORDS, 1 if task == "needle" else 4)
        numbers = [_number(rng, 7) for _ in words]
        needles = [enc(f"one of the special magic numbers for {w} is : {n} .") for w, n in zip(words, numbers)]
        asked = words[0]
        question = enc(
            f"what is the special magic number for {asked} mentioned in the provided text ? "
            f"the special magic number for {asked} mentioned in the provided text is"
        )
        answer, prefix = enc(numbers[0]), enc(_INTRO)
    else:  # kv: every record is a needle; the haystack is only what rounds the length
        record = len(enc("key 0 0 0 0 0 0 value 0 0 0 0 0 0 ."))
        prefix = enc("remember the records below .")
        question_len = len(enc("what is the value of key 0 0 0 0 0 0 ? the value of key 0 0 0 0 0 0 is"))
        count = max(2, (length - 1 - len(prefix) - question_len) // record)
        keys = rng.sample(range(10**6), count)
        pairs = [(f"{k:06d}", _number(rng, 6).replace(" ", "")) for k in keys]
        needles = [enc(f"key {' '.join(k)} value {' '.join(v)} .") for k, v in pairs]
        asked_k, asked_v = pairs[0]
        question = enc(f"what is the value of key {' '.join(asked_k)} ? the value of key {' '.join(asked_k)} is")
        answer = enc(" ".join(asked_v))
    prompt, starts = _with_needles(rng, prefix, needles, question, length, depth)
    return Sample(task, length, prompt, answer, depth=starts[0] / length)


def exact_match(predicted: list[int], answer: list[int]) -> bool:
    """True iff the first len(answer) predicted tokens are the answer's digits."""
    return list(predicted[: len(answer)]) == list(answer)
