"""Tokenizer specs, training on a line sample, and Hugging Face export that encodes exactly like SentencePiece."""

from __future__ import annotations

import json
from pathlib import Path

import pydoc_data.topics
import pytest

from slmtrain.config import ConfigError, UserError, declared_names
from slmtrain.tokenizer import TOKENIZERS_DIR, Tokenizer, TokenizerSpec, load_spec, sample_sentences, train_tokenizer

DOCS = list(pydoc_data.topics.topics.values())  # real text, present on every machine
# What real corpora hold beyond the Python docs: whitespace runs and tabs, digits, scripts and emoji absent from
# the training text (byte fallback), special-token strings appearing as plain text, NFKC-sensitive characters.
EDGE_CASES = [
    "  x  =  12345  \n\n\tβ 日本語 🤗 end ",
    "   leading spaces",
    "trailing spaces   ",
    "<s> literal </s> and <pad> and <unk> and <|tool|> in text, <0x41> is no byte",
    "ligature ﬁ, nbsp\u00a0here, full-width ＡＢＣ, combining é",
    "\n\nstarts with newlines",
    "",
]
USER_SYMBOL = "<|tool|>"


@pytest.fixture(scope="module", params=["bpe", "unigram"])
def tokenizer(request, tmp_path_factory) -> Tokenizer:
    spec = TokenizerSpec(kind=request.param, vocab_size=1200, sample_sentences=20000,
                         user_defined_symbols=[USER_SYMBOL])
    return train_tokenizer(spec, DOCS, tmp_path_factory.mktemp(request.param))


@pytest.mark.parametrize("name", declared_names(TOKENIZERS_DIR))
def test_every_declared_spec_builds(name: str) -> None:
    spec = load_spec(name)
    assert spec.kind in ("bpe", "unigram")
    assert not (TOKENIZERS_DIR / "__init__.py").exists()


def test_spec_rejects_bad_values_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="vocab_sise: unknown key; valid keys:.*vocab_size"):
        load_spec("demo", {"vocab_sise": 1000})
    with pytest.raises(ConfigError, match="kind: invalid value 'wordpiece'; valid choices: bpe, unigram"):
        load_spec("demo", {"kind": "wordpiece"})
    with pytest.raises(ConfigError, match="vocab_size: must exceed the 260 special and byte tokens"):
        TokenizerSpec(vocab_size=200)
    with pytest.raises(ConfigError, match="special tokens repeat"):
        TokenizerSpec(user_defined_symbols=["</s>"])
    delta = tmp_path / "small.yaml"
    delta.write_text(f"base: {TOKENIZERS_DIR / 'demo.yaml'}\nvocab_size: 999\n")
    assert load_spec(delta).vocab_size == 999 and load_spec(delta).kind == load_spec("demo").kind


def test_sample_is_bounded_seeded_lines() -> None:
    lines = [f"line {i}" for i in range(5000)]
    texts = ["\n".join(lines[i: i + 50]) + "\n\n  \n" for i in range(0, 5000, 50)]
    sample = sample_sentences(texts, size=300, seed=1, max_bytes=100)
    assert len(sample) == 300 and len(set(sample)) == 300 and set(sample) <= set(lines)
    assert sample == sample_sentences(texts, size=300, seed=1, max_bytes=100)
    assert sample != sample_sentences(texts, size=300, seed=2, max_bytes=100)
    # every region of the corpus is represented, not just the first lines that filled the reservoir
    assert max(int(s.split()[1]) for s in sample) > 4000 and min(int(s.split()[1]) for s in sample) < 1000
    assert sample_sentences(["é" * 10], size=5, seed=0, max_bytes=5) == ["éé"]  # cut on a character boundary


def test_training_is_deterministic_and_round_trips(tokenizer: Tokenizer, tmp_path: Path) -> None:
    spec = json.loads((tokenizer.model_file.parent / "spec.json").read_text())["spec"]
    again = train_tokenizer(TokenizerSpec(**spec), DOCS, tmp_path)
    assert again.sha256 == tokenizer.sha256 and len(tokenizer.sha256) == 64
    for text in DOCS + EDGE_CASES:
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids) == text
        assert tokenizer.unk_id not in ids  # byte fallback: nothing is lost to <unk>
    assert tokenizer.encode_batch(DOCS[:5]) == [tokenizer.encode(d) for d in DOCS[:5]]
    assert (tokenizer.vocab_size, tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (
        1200, 0, 1, 2, 3)


def test_digits_are_split_and_user_symbols_kept_whole(tokenizer: Tokenizer) -> None:
    pieces = [tokenizer.processor.id_to_piece(i) for i in range(tokenizer.vocab_size)]
    multi_digit = [p for p in pieces if any(c.isdigit() for c in p) and len(p.strip("▁")) > 1
                   and not p.startswith("<0x")]
    assert multi_digit == []
    ids = tokenizer.encode(f"call {USER_SYMBOL} 2024")
    assert tokenizer.processor.piece_to_id(USER_SYMBOL) in ids
    assert [tokenizer.processor.id_to_piece(i).strip("▁") for i in ids[-4:]] == ["2", "0", "2", "4"]


def test_hf_export_encodes_identically(tokenizer: Tokenizer, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    out = tokenizer.save_hf(tmp_path / "hf")
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"} <= {p.name for p in out.iterdir()}
    hf = AutoTokenizer.from_pretrained(out)
    pairs = [(tokenizer.encode(text), hf.encode(text, add_special_tokens=False)) for text in DOCS + EDGE_CASES]
    mismatches = [(ours, theirs) for ours, theirs in pairs if ours != theirs]
    if json.loads((tokenizer.model_file.parent / "spec.json").read_text())["spec"]["kind"] == "unigram":
        # Unigram's Viterbi search breaks exact score ties differently in the two libraries (e.g. "=====" as
        # 8+1+11+1 vs 8+1+1+11 '=' pieces): the same pieces, the same score, another order. Only that is allowed.
        assert all(sorted(ours) == sorted(theirs) for ours, theirs in mismatches)
        assert len(mismatches) <= len(pairs) // 4
    else:
        assert mismatches == []
    for text in EDGE_CASES + DOCS[:10]:
        assert hf.decode(tokenizer.encode(text)) == text
    assert (hf.eos_token_id, hf.bos_token_id, hf.pad_token_id, hf.unk_token_id) == (
        tokenizer.eos_id, tokenizer.bos_id, tokenizer.pad_id, tokenizer.unk_id)
    assert len(hf) == tokenizer.vocab_size


def test_missing_or_empty_input_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no trained tokenizer"):
        Tokenizer.load(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"not a sentencepiece model")
    with pytest.raises(UserError, match="tokenizer.model: not a readable SentencePiece model"):
        Tokenizer.load(tmp_path)
    (tmp_path / "tokenizer.model").unlink()
    with pytest.raises(UserError, match="no text to train"):
        train_tokenizer(TokenizerSpec(vocab_size=500), ["", "  \n "], tmp_path)
    with pytest.raises(ConfigError, match="vocab_size: sentencepiece training failed"):
        train_tokenizer(TokenizerSpec(vocab_size=50_000), DOCS[:3], tmp_path)
    assert not (tmp_path / "tokenizer.model").exists()
