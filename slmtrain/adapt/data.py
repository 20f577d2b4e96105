"""Fine-tuning data: JSONL records -> token ids with a loss mask, and the batches a training step takes.

One record per line, in one of three formats (detected per record):

- ``{"text": ...}``: the loss is on every token.
- ``{"prompt": ..., "completion": ...}``: the loss is on the completion (and the EOS after it) only.
- ``{"messages": [{"role": ..., "content": ...}, ...]}``: the loss is on the assistant turns only. The tokenizer's
  chat template renders the conversation when it has one; otherwise :data:`DEFAULT_CHAT_TURN` does, one
  ``"<role>: <content>\\n"`` line per turn, the ``"assistant: "`` header itself not trained on.

Every sequence starts with the document-prefix token (BOS, else EOS) and ends with EOS. Lines that are not JSON,
records without the fields of any format, and records that keep no target token within ``seq_len`` are counted by
reason in a :class:`DataReport`; a file with no usable record at all is an error.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from slmtrain.artifacts import TextTokenizer
from slmtrain.config import UserError
from slmtrain.eval import document_prefix_id

IGNORE_INDEX = -100  # labels torch.nn.functional.cross_entropy skips
DEFAULT_CHAT_TURN = "{role}: {content}\n"
FORMATS = "text; prompt + completion; messages (a list of {role, content})"


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where no loss is taken; otherwise equal to input_ids

    @property
    def target_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels[1:])


@dataclass
class DataReport:
    """What became of every line of a data file."""

    path: str
    lines: int = 0
    used: int = 0
    truncated: int = 0  # used, but cut to seq_len + 1 tokens
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    first_skipped_line: dict[str, int] = field(default_factory=dict)  # reason -> first line number

    def skip(self, reason: str, line: int) -> None:
        self.skipped[reason] += 1
        self.first_skipped_line.setdefault(reason, line)

    def summary(self) -> str:
        skipped = "; ".join(f"{count} {reason} (first at line {self.first_skipped_line[reason]})"
                            for reason, count in self.skipped.items())
        return (f"{self.used} of {self.lines} records used, {self.truncated} truncated"
                + (f"; skipped: {skipped}" if skipped else ""))

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "lines": self.lines, "used": self.used, "truncated": self.truncated,
                "skipped": dict(self.skipped), "first_skipped_line": self.first_skipped_line}


# ---------------------------------------------------------------------------------------------- records -> segments
def segments(record: Any, tokenizer: TextTokenizer) -> list[tuple[str, bool]]:
    """A record as (text, trained on) pieces in order; ValueError naming what is missing when it fits no format."""
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    if isinstance(record.get("text"), str) and record["text"].strip():
        return [(record["text"], True)]
    if isinstance(record.get("prompt"), str) and isinstance(record.get("completion"), str):
        if not record["completion"].strip():
            raise ValueError("empty completion")
        return [(record["prompt"], False), (record["completion"], True)]
    messages = record.get("messages")
    if isinstance(messages, list) and messages:
        if not all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                   for m in messages):
            raise ValueError("messages must be {role, content} objects")
        if not any(m["role"] == "assistant" for m in messages):
            raise ValueError("no assistant turn")
        return chat_segments(messages, tokenizer)
    raise ValueError("no field of a known format")


def chat_segments(messages: list[dict[str, str]], tokenizer: TextTokenizer) -> list[tuple[str, bool]]:
    """The conversation rendered turn by turn; assistant content (with what the template closes it with) trained."""
    template = getattr(getattr(tokenizer, "inner", None), "chat_template", None)
    if template is None:
        pieces: list[tuple[str, bool]] = []
        for m in messages:
            if m["role"] == "assistant":
                pieces += [("assistant: ", False), (m["content"] + "\n", True)]
            else:
                pieces.append((DEFAULT_CHAT_TURN.format(**m), False))
        return pieces
    render = tokenizer.inner.apply_chat_template  # type: ignore[attr-defined]
    pieces, done = [], ""
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            header = render(messages[:i], tokenize=False, add_generation_prompt=True)
            pieces.append((_after(done, header), False))
            done = header
        rendered = render(messages[: i + 1], tokenize=False)
        pieces.append((_after(done, rendered), m["role"] == "assistant"))
        done = rendered
    return pieces


def _after(prefix: str, text: str) -> str:
    if not text.startswith(prefix):
        raise ValueError("the chat template does not render a conversation as a prefix of its continuation")
    return text[len(prefix):]


def encode_segments(pieces: Sequence[tuple[str, bool]], tokenizer: TextTokenizer) -> Example:
    """Token ids of the whole text, each token labelled by the piece it comes from. Pieces are split where the
    whole text's tokenization splits (as slmtrain.eval.scoring.encode_pair), so training sees the tokens evaluation
    scores; a piece whose tokens merge across its seam falls back to being encoded on its own."""
    ids: list[int] = [document_prefix_id(tokenizer)]
    labels: list[int] = [IGNORE_INDEX]
    text, done = "", []
    for piece, trained in pieces:
        text += piece
        whole = tokenizer.encode(text)
        new = whole[len(done):] if whole[: len(done)] == done else tokenizer.encode(piece)
        done = done + new
        ids += new
        labels += new if trained else [IGNORE_INDEX] * len(new)
    ids.append(tokenizer.eos_id)
    labels.append(tokenizer.eos_id if pieces[-1][1] else IGNORE_INDEX)
    return Example(ids, labels)


# ------------------------------------------------------------------------------------------------------- files
def read_examples(path: str | Path, tokenizer: TextTokenizer, seq_len: int) -> tuple[list[Example], DataReport]:
    """Every usable record of a JSONL file (cut to seq_len + 1 tokens), and what became of each line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file not found: {path}")
    if tokenizer.eos_id is None:
        raise UserError("the tokenizer has no EOS token to end each sequence with")
    report = DataReport(str(path))
    examples: list[Example] = []
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            report.lines += 1
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                report.skip("invalid JSON", number)
                continue
            try:
                example = encode_segments(segments(record, tokenizer), tokenizer)
            except ValueError as e:
                report.skip(str(e), number)
                continue
            truncated = len(example.input_ids) > seq_len + 1
            example = Example(example.input_ids[: seq_len + 1], example.labels[: seq_len + 1])
            if example.target_tokens == 0:
                report.skip(f"no target token within seq_len={seq_len}", number)
                continue
            examples.append(example)
            report.used += 1
            report.truncated += truncated
    if report.lines == 0:
        raise UserError(f"{path}: empty data file")
    if not examples:
        raise UserError(f"{path}: no usable record ({report.summary()}); the formats are: {FORMATS}")
    return examples, report


def split_examples(examples: list[Example], val_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """A seeded held-out split: at least one validation and one training example."""
    if len(examples) < 2:
        raise UserError(f"{len(examples)} usable record(s): a held-out split needs at least 2 (or give val_data=)")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = min(max(1, round(val_fraction * len(examples))), len(examples) - 1)
    return [examples[i] for i in order[n_val:]], [examples[i] for i in order[:n_val]]


# ----------------------------------------------------------------------------------------------------- batches
@dataclass
class Batch:
    inputs: torch.Tensor  # (B, T) token ids
    targets: torch.Tensor  # (B, T) the next token, IGNORE_INDEX where no loss is taken (prompts, padding)
    tokens: int  # real (not padding) input positions

    @property
    def target_tokens(self) -> int:
        return int((self.targets != IGNORE_INDEX).sum())


def collate(examples: Sequence[Example], pad_id: int) -> Batch:
    """Right-padded to the longest example; padding is never a target (and causal attention never looks ahead)."""
    width = max(len(e.input_ids) for e in examples) - 1
    inputs = torch.full((len(examples), width), pad_id, dtype=torch.long)
    targets = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, e in enumerate(examples):
        inputs[row, : len(e.input_ids) - 1] = torch.as_tensor(e.input_ids[:-1])
        targets[row, : len(e.labels) - 1] = torch.as_tensor(e.labels[1:])
    return Batch(inputs, targets, sum(len(e.input_ids) - 1 for e in examples))


def training_batches(examples: list[Example], micro_batch: int, pad_id: int, seed: int) -> Iterator[Batch]:
    """Endless batches: each epoch a new seeded permutation of the examples."""
    epoch = 0
    while True:
        order = list(range(len(examples)))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        for first in range(0, len(order), micro_batch):
            yield collate([examples[i] for i in order[first: first + micro_batch]], pad_id)
        epoch += 1


def evaluation_batches(examples: list[Example], micro_batch: int, pad_id: int) -> list[Batch]:
    return [collate(examples[i: i + micro_batch], pad_id) for i in range(0, len(examples), micro_batch)]
