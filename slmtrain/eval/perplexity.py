"""Perplexity and bits-per-byte on held-out token shards, text files or strings.

Each document is scored on its own, conditioned on a prefix token (BOS, else EOS), with every token predicted
exactly once. Documents longer than the window are scored in windows that advance by ``stride`` tokens, so each
token after the first window keeps at least ``window - stride`` tokens of context (``stride = window`` gives
non-overlapping windows, the cheapest and most pessimistic choice). Bits per byte divide the total negative
log-likelihood by the UTF-8 size of the text, which makes models with different tokenizers comparable.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from slmtrain.config import UserError
from slmtrain.eval import TextTokenizer, document_prefix_id
from slmtrain.model.transformer import Transformer


@dataclass
class PerplexityResult:
    nll_nats: float  # summed negative log-likelihood of every scored token
    tokens: int  # scored tokens
    bytes: int | None  # UTF-8 bytes of the scored text; None when the text is unknown (shards without a tokenizer)
    documents: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll_nats / self.tokens)

    @property
    def bits_per_token(self) -> float:
        return self.nll_nats / self.tokens / math.log(2)

    @property
    def bits_per_byte(self) -> float | None:
        return None if not self.bytes else self.nll_nats / self.bytes / math.log(2)

    def as_dict(self) -> dict[str, Any]:
        return {"perplexity": self.perplexity, "bits_per_token": self.bits_per_token,
                "bits_per_byte": self.bits_per_byte, "tokens": self.tokens, "bytes": self.bytes,
                "documents": self.documents}


@torch.no_grad()
def sequence_nll(model: Transformer, ids: Sequence[int], window: int | None = None,
                 stride: int | None = None) -> float:
    """Sum over t >= 1 of -log p(ids[t] | ids[:t]) in nats, in windows of at most ``window`` input tokens."""
    window = window or model.config.max_seq_len
    stride = stride or window
    if not 0 < stride <= window <= model.config.max_seq_len:
        raise UserError(f"need 0 < stride ({stride}) <= window ({window}) <= max_seq_len ({model.config.max_seq_len})")
    device = next(model.parameters()).device
    tokens = torch.as_tensor(list(ids), dtype=torch.long, device=device)
    model.check_token_ids(tokens[None])
    total = 0.0
    scored_until = 1  # positions [1, scored_until) are done
    while scored_until < len(tokens):
        end = min(scored_until + stride, len(tokens))  # score positions [scored_until, end)
        start = max(0, end - 1 - window)
        logits = model(tokens[None, start: end - 1])[0, scored_until - start - 1:]
        targets = tokens[scored_until:end]
        total += float(F.cross_entropy(logits.float(), targets, reduction="sum"))
        scored_until = end
    if not math.isfinite(total):
        raise UserError(f"non-finite log-likelihood ({total}): the model produces NaN/inf logits")
    return total


def perplexity_of_texts(model: Transformer, tokenizer: TextTokenizer, texts: Iterable[str], window: int | None = None,
                        stride: int | None = None) -> PerplexityResult:
    """Each text is one document, conditioned on the prefix token; blank texts are an error, not a silent zero."""
    prefix = document_prefix_id(tokenizer)
    result = PerplexityResult(nll_nats=0.0, tokens=0, bytes=0, documents=0)
    for text in texts:
        ids = tokenizer.encode(text)
        if not ids:
            raise UserError(f"document {result.documents} encodes to no tokens (empty text?)")
        result.nll_nats += sequence_nll(model, [prefix, *ids], window, stride)
        result.tokens += len(ids)
        result.bytes += len(text.encode("utf-8"))
        result.documents += 1
    if result.documents == 0:
        raise UserError("no documents to score")
    return result


def perplexity_of_shards(model: Transformer, shards_dir: str | Path, split: str = "val",
                         max_tokens: int | None = None, window: int | None = None, stride: int | None = None,
                         tokenizer: TextTokenizer | None = None) -> PerplexityResult:
    """Perplexity of the documents of a shards split (each ends with EOS; the EOS prediction is scored, it is part
    of what the model learned). Bytes come from decoding the ids with ``tokenizer``, else with the tokenizer the
    shards were written with when its file is still there; otherwise bits per byte are left out."""
    from slmtrain.data.shards import open_split, shards_tokenizer

    data = open_split(shards_dir, split)
    if data.vocab_size > model.config.vocab_size:
        raise UserError(f"shards use {data.vocab_size} token ids but the model has vocab_size "
                        f"{model.config.vocab_size}")
    if tokenizer is None and Path(data.meta["tokenizer_model"]).is_file():
        tokenizer = shards_tokenizer(data.meta, shards_dir)  # refused when trained again since
    ends = [*map(int, data.doc_starts[1:]), len(data)]
    result = PerplexityResult(nll_nats=0.0, tokens=0, bytes=0 if tokenizer is not None else None, documents=0)
    for start, end in zip(map(int, data.doc_starts), ends):
        if max_tokens is not None:
            end = min(end, start + max_tokens - result.tokens)
        ids = data.read(start, end - start).tolist()
        result.nll_nats += sequence_nll(model, [data.eos_id, *ids], window, stride)
        result.tokens += len(ids)
        result.documents += 1
        if tokenizer is not None:
            result.bytes += len(tokenizer.decode([i for i in ids if i != data.eos_id]).encode("utf-8"))
        if max_tokens is not None and result.tokens >= max_tokens:
            break
    if result.tokens == 0:
        raise UserError(f"{shards_dir}: split {split!r} has no tokens")
    return result
