"""A task on which a small and a larger model really differ, built and trained here in minutes on CPU: adding two
numbers of 1 to ``max_digits`` digits ("4821+37=" -> "4858"). Short sums are easy for any model, long carries are
not, so a small model is right on part of the queries and unsure on the rest: what routing needs to be measured
rather than simulated. Models are trained by a short loop over the Transformer and exported as Hugging Face
directories with a character tokenizer, so that ``load_model`` and the server take them like any other model."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from slmtrain.model import presets
from slmtrain.model.formats.hf import export_hf
from slmtrain.model.transformer import Transformer

CHARACTERS = "0123456789+=\n"
EOS = len(CHARACTERS)  # also the document-start token, as in every slmtrain model
VOCAB_SIZE = EOS + 1


@dataclass
class Example:
    prompt: str
    answer: str


def sums(count: int, max_digits: int, seed: int) -> list[Example]:
    """``count`` additions whose operands have a uniformly drawn number of digits in [1, max_digits]."""
    rng = random.Random(seed)

    def operand() -> int:
        digits = rng.randint(1, max_digits)
        return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)

    return [Example(f"{a}+{b}=", str(a + b)) for a, b in ((operand(), operand()) for _ in range(count))]


def write_examples(path: Path, examples: list[Example]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"prompt": e.prompt, "answer": e.answer}) + "\n" for e in examples))
    return path


def encode(text: str) -> list[int]:
    return [CHARACTERS.index(c) for c in text]


def train_adder(model: Transformer, steps: int, max_digits: int, batch: int = 64, lr: float = 3e-3,
                seed: int = 0) -> Transformer:
    """Fit ``model`` to fresh random sums each step, with the loss on the answer and its newline only (the operands
    are random: predicting them teaches nothing)."""
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 50) * (1 - step / steps))
    model.train()
    for step in range(steps):
        rows, masks = [], []
        for example in sums(batch, max_digits, seed * 1_000_003 + step):
            prompt, answer = [EOS, *encode(example.prompt)], encode(example.answer + "\n")
            rows.append(prompt + answer)
            masks.append([False] * (len(prompt) - 1) + [True] * len(answer))
        width = max(map(len, rows))
        ids = torch.tensor([row + [EOS] * (width - len(row)) for row in rows])
        mask = torch.tensor([m + [False] * (width - 1 - len(m)) for m in masks])
        logits = model(ids[:, :-1])
        loss = F.cross_entropy(logits[mask], ids[:, 1:][mask])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


def save_adder(model: Transformer, out_dir: Path) -> Path:
    """A Hugging Face directory (weights, config, a character tokenizer) that ``load_model`` reads."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    export_hf(model, out_dir, bos_id=EOS, eos_id=EOS)
    vocab = {c: i for i, c in enumerate(CHARACTERS)} | {"<eos>": EOS}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))  # no merges: one token per character
    backend.decoder = decoders.Fuse()
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>").save_pretrained(str(out_dir))
    return out_dir


def adder(n_layer: int, d_model: int, max_digits: int, seed: int = 0) -> Transformer:
    """A fresh model sized for sums of ``max_digits`` digits (context: the longest problem and then some)."""
    torch.manual_seed(seed)
    heads = max(1, d_model // 32)
    return Transformer(presets.get("tiny", vocab_size=VOCAB_SIZE, n_layer=n_layer, d_model=d_model, n_head=heads,
                                   n_kv_head=heads, ffn_hidden=4 * d_model, max_seq_len=4 * max_digits + 8))
