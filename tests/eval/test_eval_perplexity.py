from __future__ import annotations

import json
import math

import numpy as np
import pydoc_data.topics
import pytest
import torch

from tests.eval.eval_helpers import BOS, EOS, tiny_model
from slmtrain.config import UserError
from slmtrain.data.shards import read_documents
from slmtrain.eval.perplexity import perplexity_of_shards, perplexity_of_texts, sequence_nll

TEXTS = [pydoc_data.topics.topics["if"][:100], pydoc_data.topics.topics["while"][:80]]  # each fits one window


def hand_nll(model, ids: list[int], first: int, end: int, context_start) -> float:
    """-sum log p(ids[p] | ids[context_start(p):p]) for p in [first, end), one forward pass per token."""
    total = 0.0
    with torch.no_grad():
        for p in range(first, end):
            logits = model(torch.tensor([ids[context_start(p):p]]))[0, -1]
            total -= float(logits.log_softmax(-1)[ids[p]])
    return total


def full_context_nll(model, ids: list[int]) -> float:
    """-sum log p(ids[p] | ids[:p]) from one forward pass over the whole sequence."""
    with torch.no_grad():
        logprobs = model(torch.tensor([ids]))[0, :-1].log_softmax(-1)
    return -float(logprobs.gather(-1, torch.tensor(ids[1:])[:, None]).sum())


def test_sequence_nll_single_window_matches_hand_computation(model):
    ids = [BOS, *range(65, 65 + 40)]
    assert sequence_nll(model, ids) == pytest.approx(hand_nll(model, ids, 1, len(ids), lambda p: 0), rel=1e-5)
    assert sequence_nll(model, ids) == pytest.approx(full_context_nll(model, ids), rel=1e-5)


@pytest.mark.parametrize("window,stride", [(16, 16), (16, 5)])
def test_sequence_nll_windows_score_each_token_once_with_the_documented_context(model, window, stride):
    ids = [BOS, *(np.random.default_rng(0).integers(0, 256, 45).tolist())]
    # position p is scored in the chunk ending at end = min(first + stride, n); its input starts at end - 1 - window
    starts = {}
    first = 1
    while first < len(ids):
        end = min(first + stride, len(ids))
        for p in range(first, end):
            starts[p] = max(0, end - 1 - window)
        first = end
    expected = hand_nll(model, ids, 1, len(ids), starts.__getitem__)
    assert sequence_nll(model, ids, window, stride) == pytest.approx(expected, rel=1e-5)


def test_perplexity_and_bits_per_byte_of_texts(model, tokenizer):
    result = perplexity_of_texts(model, tokenizer, TEXTS)
    nll = sum(full_context_nll(model, [BOS, *t.encode()]) for t in TEXTS)
    tokens = sum(len(t.encode()) for t in TEXTS)
    assert result.tokens == tokens and result.documents == 2
    assert result.perplexity == pytest.approx(math.exp(nll / tokens), rel=1e-5)
    assert result.bits_per_byte == pytest.approx(nll / tokens / math.log(2), rel=1e-5)  # one byte per token


def test_bad_inputs_fail_clearly(model, tokenizer, tmp_path):
    with pytest.raises(UserError, match="no tokens"):
        perplexity_of_texts(model, tokenizer, ["ok", ""])
    broken = tiny_model()
    with torch.no_grad():
        broken.blocks[0].mlp.down.weight.fill_(float("nan"))
    with pytest.raises(UserError, match="non-finite"):
        perplexity_of_texts(broken, tokenizer, ["some text"])
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(UserError, match="empty"):
        read_documents([tmp_path / "empty.txt"])
    (tmp_path / "docs.jsonl").write_text('{"text": "fine"}\nnot json\n')
    with pytest.raises(UserError, match="1 corrupt"):
        read_documents([tmp_path / "docs.jsonl"])
    with pytest.raises(UserError, match="text file not found"):
        read_documents([tmp_path / "missing.txt"])
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(UserError, match="latin1.txt: not UTF-8 text"):
        read_documents([tmp_path / "latin1.txt"])
    (tmp_path / "notes.md").write_text("# A heading\nMarkdown is text, one document.\n")
    assert read_documents([tmp_path / "notes.md"]) == ["# A heading\nMarkdown is text, one document.\n"]


def write_shards(folder, documents: list[list[int]]) -> None:
    """A one-shard ``val`` split in the slmtrain-shards/1 layout (documents each followed by EOS)."""
    flat = [t for doc in documents for t in (*doc, EOS)]
    bounds = np.cumsum([0] + [len(d) + 1 for d in documents])
    (folder / "val").mkdir(parents=True)
    np.asarray(flat, dtype=np.uint16).tofile(folder / "val" / "a.bin")
    np.save(folder / "val" / "a.idx.npy", bounds.astype(np.int64))
    shard = {"name": "a", "tokens": len(flat), "docs": len(documents), "max_id": max(flat)}
    meta = {"format": "slmtrain-shards/1", "vocab_size": 258, "dtype": "uint16", "eos_id": EOS, "bos_id": BOS,
            "tokenizer_model": str(folder / "absent.model"), "tokenizer_sha256": "0" * 64,
            "splits": {"val": {"tokens": len(flat), "docs": len(documents), "shards": [shard]}}}
    (folder / "meta.json").write_text(json.dumps(meta))


def test_perplexity_of_shards_scores_documents_with_their_eos(model, tokenizer, tmp_path):
    documents = [t.encode() for t in TEXTS]
    write_shards(tmp_path, documents)
    result = perplexity_of_shards(model, tmp_path, tokenizer=tokenizer)
    sequences = [[EOS, *doc, EOS] for doc in documents]
    nll = sum(full_context_nll(model, s) for s in sequences)
    assert result.tokens == sum(len(d) + 1 for d in documents)
    assert result.nll_nats == pytest.approx(nll, rel=1e-5)
    assert result.bytes == sum(len(d) for d in documents)
    without_tokenizer = perplexity_of_shards(model, tmp_path, max_tokens=50)
    assert without_tokenizer.tokens == 50 and without_tokenizer.bits_per_byte is None
