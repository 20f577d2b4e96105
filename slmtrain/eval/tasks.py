"""Benchmark tasks from local JSONL files: multiple choice by log-likelihood and generation by exact match.

Formats are those of the Hugging Face datasets, detected from each file's keys, and prompts follow
lm-evaluation-harness so numbers are comparable:

- HellaSwag ``ctx``/``endings``/``label``: context ``ctx``, choices the endings.
- ARC ``question``/``choices{text,label}``/``answerKey``: ``"Question: q\\nAnswer:"``, choices the texts.
- PIQA ``goal``/``sol1``/``sol2``/``label``: ``"Question: goal\\nAnswer:"``, choices ``sol1``, ``sol2``.
- GSM8K ``question``/``answer`` (``... #### N``): greedy generation after ``"Question: q\\nAnswer:"`` until a blank
  line; the number after ``####`` (else the last number generated) must equal the reference number.

Multiple choice reports ``acc`` (highest summed log-likelihood) and ``acc_norm`` (highest log-likelihood per
character of the choice, which removes the bias towards short choices). Few-shot examples are other items of the
same file, drawn with a fixed seed, each shown with its correct answer. Each choice is scored as the
continuation ``" " + choice``; acc_norm divides by the length of the choice without that space (as the harness).
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from slmtrain.config import ConfigError, UserError
from slmtrain.eval import TextTokenizer, document_prefix_id
from slmtrain.model.transformer import KVCache, Transformer

DATA_DIR = Path(__file__).resolve().parent / "data"
FEWSHOT_SEPARATOR = "\n\n"
TARGET_DELIMITER = " "  # between a context and each choice, as lm-evaluation-harness joins them


@dataclass
class MultipleChoice:
    context: str
    choices: list[str]  # each follows the context after TARGET_DELIMITER
    label: int

    def solved(self) -> str:
        return self.context + TARGET_DELIMITER + self.choices[self.label]


@dataclass
class Generation:
    prompt: str
    solution: str  # the reference text shown in few-shot examples
    answer: str  # the normalised number exact match compares against

    def solved(self) -> str:
        return f"{self.prompt} {self.solution}"


@dataclass
class Task:
    name: str
    format: str
    items: list[MultipleChoice] | list[Generation]

    @property
    def is_generation(self) -> bool:
        return self.format in GENERATION_FORMATS


# ---------------------------------------------------------------------------------------------------- formats
def _hellaswag(r: dict[str, Any]) -> MultipleChoice:
    return MultipleChoice(_clean_hellaswag(r["ctx"]), [_clean_hellaswag(e) for e in r["endings"]],
                          int(r["label"]))


def _clean_hellaswag(text: str) -> str:
    """lm-evaluation-harness's HellaSwag preprocessing: WikiHow artefacts out, double spaces collapsed."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _arc(r: dict[str, Any]) -> MultipleChoice:
    labels = list(r["choices"]["label"])
    if r["answerKey"] not in labels:
        raise ValueError(f"answerKey {r['answerKey']!r} is not one of the labels {labels}")
    return MultipleChoice(f"Question: {r['question']}\nAnswer:", list(r["choices"]["text"]),
                          labels.index(r["answerKey"]))


def _piqa(r: dict[str, Any]) -> MultipleChoice:
    return MultipleChoice(f"Question: {r['goal']}\nAnswer:", [r["sol1"], r["sol2"]], int(r["label"]))


def _gsm8k(r: dict[str, Any]) -> Generation:
    answer = extract_number(r["answer"])
    if answer is None:
        raise ValueError("the answer has no final number")
    return Generation(f"Question: {r['question']}\nAnswer:", r["answer"].strip(), answer)


# Detected from a record's keys: the first format whose keys the record has.
FORMATS: dict[str, tuple[tuple[str, ...], Callable[[dict[str, Any]], MultipleChoice | Generation]]] = {
    "hellaswag": (("ctx", "endings", "label"), _hellaswag),
    "arc": (("question", "choices", "answerKey"), _arc),
    "piqa": (("goal", "sol1", "sol2", "label"), _piqa),
    "gsm8k": (("question", "answer"), _gsm8k),
}
GENERATION_FORMATS = ("gsm8k",)


def detect_format(record: dict[str, Any]) -> str:
    for name, (keys, _) in FORMATS.items():
        if all(k in record for k in keys):
            return name
    raise UserError(f"record keys {sorted(record)} match no task format; formats: "
                    + "; ".join(f"{n}: {', '.join(k)}" for n, (k, _) in FORMATS.items()))


def task_names(task_dir: str | Path = DATA_DIR) -> list[str]:
    return sorted(p.stem for p in Path(task_dir).glob("*.jsonl"))


def load_task(name_or_path: str | Path, task_dir: str | Path = DATA_DIR) -> Task:
    """A task by name (``task_dir/NAME.jsonl``) or by path to a JSONL file. A line that is not valid JSON or does
    not fit the file's format is an error naming the line: a score over silently fewer items would mislead."""
    path = Path(name_or_path)
    if not path.is_file():
        path = Path(task_dir) / f"{name_or_path}.jsonl"
        if not path.is_file():
            raise ConfigError("tasks", f"unknown task {str(name_or_path)!r}; valid choices: "
                                       f"{', '.join(task_names(task_dir))} (or a path to a .jsonl file)")
    items: list[Any] = []
    fmt = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            fmt = fmt or detect_format(record)
            items.append(FORMATS[fmt][1](record))
        except (json.JSONDecodeError, KeyError, ValueError, TypeError, AttributeError) as e:
            raise UserError(f"{path}:{number}: not a valid {fmt or 'task'} record ({type(e).__name__}: {e})") from None
    if fmt is None:
        raise UserError(f"{path}: no items")
    return Task(path.stem, fmt, items)


def fewshot_prefix(task: Task, index: int, shots: int, seed: int = 1234) -> str:
    """``shots`` solved items other than ``index``, drawn with a seed that depends on the item (stable across runs)."""
    if shots == 0:
        return ""
    others = [i for i in range(len(task.items)) if i != index]
    if shots > len(others):
        raise ConfigError("shots", f"{shots} shots need {shots + 1} items; {task.name} has {len(task.items)}")
    chosen = random.Random(seed * 1_000_003 + index).sample(others, shots)
    return "".join(task.items[i].solved() + FEWSHOT_SEPARATOR for i in chosen)


# ------------------------------------------------------------------------------------------ log-likelihood scoring
def encode_pair(tokenizer: TextTokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of the prefix + context, and of the continuation, split where lm-evaluation-harness splits: encode
    the whole text and the context, the continuation is what the whole adds (tokens may merge across the seam)."""
    spaces = len(context) - len(context.rstrip(" "))  # trailing context spaces belong to the continuation
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    context_ids = tokenizer.encode(context) if context else []
    whole = tokenizer.encode(context + continuation)
    if whole[: len(context_ids)] == context_ids and len(whole) > len(context_ids):
        continuation_ids = whole[len(context_ids):]
    else:
        continuation_ids = tokenizer.encode(continuation)
    return [document_prefix_id(tokenizer), *context_ids], continuation_ids


@torch.no_grad()
def loglikelihoods(model: Transformer, pairs: Sequence[tuple[list[int], list[int]]],
                   batch_size: int = 8) -> list[tuple[float, bool]]:
    """For each (context ids, continuation ids): log p(continuation | context) in nats, and whether greedy decoding
    would produce exactly the continuation. Contexts are cut from the left to fit ``max_seq_len``."""
    max_len = model.config.max_seq_len
    device = next(model.parameters()).device
    results: list[tuple[float, bool]] = []
    for first in range(0, len(pairs), batch_size):
        rows, spans = [], []
        for context, continuation in pairs[first: first + batch_size]:
            if not continuation or len(continuation) >= max_len:
                raise UserError(f"a continuation of {len(continuation)} tokens cannot be scored with "
                                f"max_seq_len={max_len}")
            ids = (context + continuation)[-(max_len + 1):]
            rows.append(ids[:-1])
            spans.append(len(continuation))
        width = max(map(len, rows))
        batch = torch.zeros(len(rows), width, dtype=torch.long, device=device)  # right padding: causal, unseen
        for i, row in enumerate(rows):
            batch[i, : len(row)] = torch.as_tensor(row)
        model.check_token_ids(batch)
        logprobs = F.log_softmax(model(batch).float(), dim=-1)
        for i, (row, span) in enumerate(zip(rows, spans)):
            scored = logprobs[i, len(row) - span: len(row)]
            target = torch.as_tensor(pairs[first + i][1], device=device)
            total = float(scored.gather(-1, target[:, None]).sum())
            if not math.isfinite(total):
                raise UserError(f"non-finite log-likelihood ({total}): the model produces NaN/inf logits")
            results.append((total, bool((scored.argmax(-1) == target).all())))
    return results


# ---------------------------------------------------------------------------------------------------- generation
@torch.no_grad()
def greedy_until(model: Transformer, tokenizer: TextTokenizer, prompt: str, stop: Sequence[str] = (),
                 max_new_tokens: int = 256) -> str:
    """Greedy continuation of ``prompt``, cut before the first stop string; also stops at EOS and at the context
    limit (the prompt is cut from the left to leave room for at least one new token)."""
    max_len = model.config.max_seq_len
    ids = [document_prefix_id(tokenizer), *tokenizer.encode(prompt)][-(max_len - 1):]
    device = next(model.parameters()).device
    cache = KVCache(model.config, 1, max_len, device, next(model.parameters()).dtype)
    logits = model(torch.as_tensor([ids], device=device), cache=cache)[0, -1]
    generated: list[int] = []
    text = ""
    for _ in range(min(max_new_tokens, max_len - len(ids))):
        token = int(logits.argmax())
        if token == tokenizer.eos_id:
            break
        generated.append(token)
        text = tokenizer.decode(generated)
        if any(s in text for s in stop):
            break
        if cache.length < max_len:
            logits = model(torch.as_tensor([[token]], device=device), cache=cache)[0, -1]
    cut = min((text.index(s) for s in stop if s in text), default=len(text))
    return text[:cut]


NUMBER = re.compile(r"-?[\d,]*\.?\d+")


def extract_number(text: str) -> str | None:
    """The number after ``####`` if there is one, else the last number in the text, canonical: commas and trailing
    fractional zeros removed, so ``1,000``, ``1000.0`` and ``1000.00`` all read ``1000`` and ``12.50`` reads ``12.5``."""
    marked = text.split("####")[-1] if "####" in text else text
    numbers = NUMBER.findall(marked)
    if not numbers:
        return None
    number = numbers[0] if "####" in text else numbers[-1]
    number = number.replace(",", "")
    if "." in number:
        number = number.rstrip("0").rstrip(".")
    return number


# ---------------------------------------------------------------------------------------------------- evaluation
@dataclass
class TaskResult:
    task: str
    format: str
    shots: int
    items: int
    metrics: dict[str, float]
    scores: dict[str, list[float]] = field(default_factory=dict)  # per item, for confidence intervals

    def as_dict(self) -> dict[str, Any]:
        return {"task": self.task, "format": self.format, "shots": self.shots, "items": self.items, **self.metrics}


def evaluate_task(model: Transformer, tokenizer: TextTokenizer, task: Task, shots: int = 0, limit: int | None = None,
                  seed: int = 1234, max_new_tokens: int = 256) -> TaskResult:
    indices = range(len(task.items) if limit is None else min(limit, len(task.items)))
    if not indices:
        raise ConfigError("limit", f"must be positive, got {limit}")
    if task.is_generation:
        hits = []
        for index in indices:
            item: Any = task.items[index]
            output = greedy_until(model, tokenizer, fewshot_prefix(task, index, shots, seed) + item.prompt,
                                  stop=(FEWSHOT_SEPARATOR, "Question:"), max_new_tokens=max_new_tokens)
            hits.append(float(extract_number(output) == item.answer))
        scores = {"exact_match": hits}
    else:
        correct, correct_norm = [], []
        for index in indices:
            item = task.items[index]
            context = fewshot_prefix(task, index, shots, seed) + item.context
            pairs = [encode_pair(tokenizer, context, TARGET_DELIMITER + choice) for choice in item.choices]
            loglik = [ll for ll, _ in loglikelihoods(model, pairs)]
            normalised = [ll / max(len(c), 1) for ll, c in zip(loglik, item.choices)]
            correct.append(float(max(range(len(loglik)), key=loglik.__getitem__) == item.label))
            correct_norm.append(float(max(range(len(loglik)), key=normalised.__getitem__) == item.label))
        scores = {"acc": correct, "acc_norm": correct_norm}
    metrics = {name: sum(values) / len(values) for name, values in scores.items()}
    return TaskResult(task.name, task.format, shots, len(indices), metrics, scores)
