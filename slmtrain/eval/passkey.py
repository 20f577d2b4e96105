"""Passkey retrieval, generated offline: can the model find a 5-digit key hidden at a chosen depth of filler text?

A prompt is an instruction, filler sentences with the key's sentence at ``depth`` (0 = first, 1 = last, as a share
of the filler), and the question; the model must generate the key. Prompts are built to ``length`` tokens of the
model's own tokenizer (at most; the filler is whole sentences), so the task is made for a model when it is
evaluated (:attr:`Task.build_for`). Items are reproducible from the seed, and each key appears exactly once.
Accuracy is reported by length and depth (``TaskResult.by_group``) and overall.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from slmtrain.config import ConfigError
from slmtrain.eval.tasks import Generation, Task, register

if TYPE_CHECKING:
    from slmtrain.eval import TextTokenizer

INSTRUCTION = ("There is an important piece of information hidden inside a lot of irrelevant text. Find it and "
               "remember it. I will ask you about it.\n")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
KEY_SENTENCE = "The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = "\nWhat is the pass key? The pass key is"
DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
ANSWER_TOKENS = 8  # room left after the prompt for " 12345"


@dataclass(frozen=True)
class PasskeyItem:
    prompt: str
    key: str
    length: int  # the token budget the prompt was built to
    depth: float


def passkey_prompt(key: str, sentences: int, depth: float) -> str:
    before = round(sentences * depth)
    return INSTRUCTION + FILLER * before + KEY_SENTENCE.format(key=key) + FILLER * (sentences - before) + QUESTION


def fitting_sentences(tokenizer: TextTokenizer, budget: int, depth: float) -> int:
    """The most filler sentences whose prompt (with the prefix token) has at most ``budget`` tokens."""
    def size(n: int) -> int:
        return 1 + len(tokenizer.encode(passkey_prompt("12345", n, depth)))
    if size(0) > budget:
        raise ConfigError("lengths", f"a passkey prompt needs at least {size(0)} tokens, the budget is {budget}")
    low, high = 0, 1
    while size(high) <= budget:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if size(middle) <= budget else (low, middle)
    return low


def passkey_items(tokenizer: TextTokenizer, lengths: Sequence[int], depths: Sequence[float] = DEPTHS,
                  per_cell: int = 5, seed: int = 0) -> list[PasskeyItem]:
    rng = random.Random(seed)
    items = []
    for length in lengths:
        for depth in depths:
            if not 0 <= depth <= 1:
                raise ConfigError("depths", f"a depth is a share of the filler in [0, 1], got {depth}")
            sentences = fitting_sentences(tokenizer, length - ANSWER_TOKENS, depth)
            for _ in range(per_cell):
                key = str(rng.randint(10000, 99999))
                items.append(PasskeyItem(passkey_prompt(key, sentences, depth), key, length, depth))
    return items


def default_lengths(tokenizer: TextTokenizer, max_seq_len: int) -> list[int]:
    """Doublings from 128 tokens up to the model's context, and the context itself, each long enough for a prompt
    with no filler at all (a byte-level tokenizer needs several hundred tokens for that)."""
    shortest = 1 + len(tokenizer.encode(passkey_prompt("12345", 0, 0.0))) + ANSWER_TOKENS
    lengths, length = [], 128
    while length < max_seq_len:
        lengths.append(length)
        length *= 2
    kept = [n for n in (*lengths, max_seq_len) if n >= shortest]
    if not kept:
        raise ConfigError("tasks", f"passkey prompts need at least {shortest} tokens; the model's context is "
                                   f"{max_seq_len}")
    return kept


def key_match(output: str, key: str) -> dict[str, float]:
    found = re.search(r"\d{5}", output)
    return {"exact_match": float(found is not None and found.group() == key)}


def passkey_task(tokenizer: TextTokenizer, max_seq_len: int, lengths: Sequence[int] | None = None,
                 per_cell: int = 5, seed: int = 0) -> Task:
    lengths = list(lengths or default_lengths(tokenizer, max_seq_len))
    for length in lengths:
        if length > max_seq_len:
            raise ConfigError("lengths", f"{length} tokens exceed the model's context ({max_seq_len})")
    items = passkey_items(tokenizer, lengths, per_cell=per_cell, seed=seed)
    return Task("passkey", [Generation(i.prompt, f" {i.key}.", i.key) for i in items], ("exact_match",),
                "long_context", scorer=key_match, until=(".", "\n"), max_new_tokens=ANSWER_TOKENS,
                groups=[f"length={i.length} depth={i.depth:g}" for i in items], has_fewshot=True)


@register("passkey", "long_context", "passkey retrieval at lengths up to the model's context, 5 depths")
def passkey() -> Task:
    """Made for the model at evaluation time: its tokenizer measures the lengths, its context bounds them."""
    return Task("passkey", [], ("exact_match",), "long_context", build_for=passkey_task)
