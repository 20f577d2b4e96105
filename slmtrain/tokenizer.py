"""SentencePiece tokenizers: a typed spec (``tokenizers/NAME.yaml``), training on a sample of text, encoding, and
export as a Hugging Face ``tokenizer.json`` that encodes identically.

A trained tokenizer is a folder holding ``tokenizer.model`` (the SentencePiece model, whose sha256 identifies the
tokenizer everywhere else, e.g. in shard metadata) and ``spec.json`` (the spec it was trained from).
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import sentencepiece as spm

from slmtrain.config import (
    DECLARATIONS_DIR, ConfigError, UserError, build, check_choice, load_declaration, merge, require, to_dict,
)

TOKENIZERS_DIR = DECLARATIONS_DIR / "tokenizers"  # specs only: trained tokenizers live with their shards
MODEL_FILE = "tokenizer.model"
SPEC_FILE = "spec.json"
NORMAL_PIECE, USER_DEFINED_PIECE = 1, 4  # sentencepiece_model.proto ModelProto.SentencePiece.Type
UNREACHABLE_SCORE = -1e9


@dataclass
class TokenizerSpec:
    """What to train. Defaults follow Llama's SentencePiece setup (BPE, byte fallback, digits split, no NFKC)."""

    kind: Literal["bpe", "unigram"] = "bpe"
    vocab_size: int = 32000
    byte_fallback: bool = True  # unknown characters become UTF-8 byte tokens instead of <unk>
    split_digits: bool = True  # every digit its own token: better arithmetic, fewer arbitrary number pieces
    character_coverage: float = 0.9995  # rarer characters are left to byte fallback
    normalization: Literal["identity", "nmt_nfkc", "nfkc"] = "identity"
    remove_extra_whitespaces: bool = False  # keep whitespace runs: code and indentation must round-trip
    sample_sentences: int = 1_000_000  # lines sampled (reservoir) from the corpus for training
    max_sentence_bytes: int = 4192  # longer sampled lines are cut to this many UTF-8 bytes
    seed: int = 0
    unk: str = "<unk>"
    bos: str = "<s>"
    eos: str = "</s>"
    pad: str | None = "<pad>"
    user_defined_symbols: list[str] = field(default_factory=list)  # always emitted whole when found in text

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, ("bpe", "unigram"))
        specials = [self.unk, self.bos, self.eos, *([self.pad] if self.pad else []), *self.user_defined_symbols]
        require(all(specials), "user_defined_symbols", "special tokens must be non-empty strings")
        require(len(set(specials)) == len(specials), "user_defined_symbols", f"special tokens repeat: {specials}")
        reserved = len(specials) + (256 if self.byte_fallback else 0)
        require(self.vocab_size > reserved, "vocab_size", f"must exceed the {reserved} special and byte tokens")
        require(0.0 < self.character_coverage <= 1.0, "character_coverage", "must be in (0, 1]")
        require(self.sample_sentences > 0, "sample_sentences", "must be positive")
        require(self.max_sentence_bytes > 0, "max_sentence_bytes", "must be positive")

    @property
    def special_ids(self) -> dict[str, int]:
        """SentencePiece ids of the special tokens: unk, bos, eos first, then pad (-1 when absent)."""
        return {"unk": 0, "bos": 1, "eos": 2, "pad": 3 if self.pad else -1}


def load_spec(name_or_path: str | Path, overrides: dict[str, Any] | None = None,
              folder: str | Path = TOKENIZERS_DIR) -> TokenizerSpec:
    """``tokenizers/NAME.yaml`` (or an explicit .yaml path), with optional key=value overrides merged last."""
    return build(TokenizerSpec, merge(load_declaration("tokenizer", str(name_or_path), folder), overrides or {}))


class Tokenizer:
    """A trained SentencePiece model. ``encode`` adds no BOS/EOS: callers (shards) decide where those go."""

    def __init__(self, model_file: Path):
        self.model_file = Path(model_file)
        try:
            self.processor = spm.SentencePieceProcessor(model_file=str(self.model_file))
        except (RuntimeError, OSError) as e:  # sentencepiece's "could not parse ModelProto"
            raise UserError(f"{self.model_file}: not a readable SentencePiece model ({e}); train the tokenizer "
                            "again") from None
        self.sha256 = hashlib.sha256(self.model_file.read_bytes()).hexdigest()

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        model_file = Path(directory) / MODEL_FILE
        if not model_file.is_file():
            raise UserError(f"no trained tokenizer: {model_file} does not exist")
        return cls(model_file)

    @property
    def vocab_size(self) -> int:
        return self.processor.vocab_size()

    @property
    def bos_id(self) -> int:
        return self.processor.bos_id()

    @property
    def eos_id(self) -> int:
        return self.processor.eos_id()

    @property
    def pad_id(self) -> int:
        """-1 when the tokenizer has no pad token."""
        return self.processor.pad_id()

    @property
    def unk_id(self) -> int:
        return self.processor.unk_id()

    def encode(self, text: str) -> list[int]:
        return self.processor.encode(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        return self.processor.encode(list(texts), num_threads=num_threads)

    def decode(self, ids: Sequence[int]) -> str:
        return self.processor.decode([int(i) for i in ids])

    def save_hf(self, out_dir: str | Path) -> Path:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json for ``transformers``.

        transformers' SentencePiece converter rebuilds the model from the proto's own settings (normalizer, dummy
        prefix, byte fallback, user-defined pieces). Special tokens are split like ordinary text
        (``split_special_tokens``) because SentencePiece never maps the string "</s>" in text to the EOS id either.
        """
        from transformers import PreTrainedTokenizerFast
        from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf

        proto = import_protobuf().ModelProto()
        proto.ParseFromString(self.model_file.read_bytes())
        if proto.trainer_spec.model_type == 1:  # unigram: (piece, score) list; BPE: piece -> id mapping
            # SentencePiece segments text with normal and user-defined pieces only; HF's Unigram would also match
            # "</s>" or "<0x41>" literally in text, so those pieces get a score no segmentation would choose.
            vocab: Any = [(p.piece, p.score if p.type in (NORMAL_PIECE, USER_DEFINED_PIECE) else UNREACHABLE_SCORE)
                          for p in proto.pieces]
        else:
            vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
        backend = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab)
        specials = {"unk_token": self.unk_id, "bos_token": self.bos_id, "eos_token": self.eos_id,
                    "pad_token": self.pad_id}
        special_tokens = {name: self.processor.id_to_piece(i) for name, i in specials.items() if i >= 0}
        hf = PreTrainedTokenizerFast(tokenizer_object=backend, split_special_tokens=True, **special_tokens)
        out_dir = Path(out_dir)
        hf.save_pretrained(str(out_dir))
        # The generic class name loads in transformers 4.x and 5.x alike.
        config_file = out_dir / "tokenizer_config.json"
        config = json.loads(config_file.read_text())
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config_file.write_text(json.dumps(config, indent=2))
        (out_dir / "special_tokens_map.json").write_text(json.dumps(special_tokens, indent=2))
        # The SentencePiece model travels too: GGUF export embeds its vocabulary so llama.cpp can run the file.
        shutil.copyfile(self.model_file, out_dir / "tokenizer.model")
        return out_dir


def sample_sentences(texts: Iterable[str], size: int, seed: int, max_bytes: int) -> list[str]:
    """Reservoir sample (Algorithm R) of ``size`` non-blank lines over all texts, in bounded memory.

    Lines, not documents: SentencePiece trains on sentences, and whole documents would blow its length limit and
    over-weight long documents.
    """
    rng = random.Random(seed)
    reservoir: list[str] = []
    seen = 0
    for line in _lines(texts):
        seen += 1
        if len(reservoir) < size:
            reservoir.append(_truncate_utf8(line, max_bytes))
        else:
            slot = rng.randrange(seen)
            if slot < size:
                reservoir[slot] = _truncate_utf8(line, max_bytes)
    return reservoir


def _lines(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        for line in text.split("\n"):
            if line.strip():
                yield line


def _truncate_utf8(text: str, max_bytes: int) -> str:
    data = text.encode("utf-8")
    return text if len(data) <= max_bytes else data[:max_bytes].decode("utf-8", errors="ignore")


def train_tokenizer(spec: TokenizerSpec, texts: Iterable[str], out_dir: str | Path,
                    num_threads: int = 2) -> Tokenizer:
    """Train SentencePiece on a sample of lines from ``texts``; write ``out_dir/tokenizer.model`` and spec.json.

    ``num_threads`` is recorded inside the model, so it is fixed rather than taken from the machine: the same spec
    and text give the same model file (and sha256) everywhere.
    """
    out_dir = Path(out_dir)
    started = time.perf_counter()
    sentences = sample_sentences(texts, spec.sample_sentences, spec.seed, spec.max_sentence_bytes)
    if not sentences:
        raise UserError("no text to train the tokenizer on (no non-blank document in the input)")
    ids = spec.special_ids
    model = io.BytesIO()  # in memory, so no output path ends up inside the model (same data -> same sha256)
    spm.set_random_generator_seed(spec.seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            model_type=spec.kind,
            vocab_size=spec.vocab_size,
            byte_fallback=spec.byte_fallback,
            split_digits=spec.split_digits,
            character_coverage=spec.character_coverage,
            normalization_rule_name=spec.normalization,
            remove_extra_whitespaces=spec.remove_extra_whitespaces,
            allow_whitespace_only_pieces=True,
            max_sentence_length=spec.max_sentence_bytes,
            unk_id=ids["unk"], bos_id=ids["bos"], eos_id=ids["eos"], pad_id=ids["pad"],
            unk_piece=spec.unk, bos_piece=spec.bos, eos_piece=spec.eos, pad_piece=spec.pad or "<pad>",
            user_defined_symbols=spec.user_defined_symbols,
            num_threads=num_threads,
            minloglevel=2,
        )
    except RuntimeError as e:  # e.g. "Vocabulary size too high" on a small sample: say so in one line
        raise ConfigError("vocab_size", f"sentencepiece training failed: {str(e).splitlines()[0]}") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"spec": to_dict(spec), "sample_sentences": len(sentences),
              "train_seconds": round(time.perf_counter() - started, 2)}
    (out_dir / SPEC_FILE).write_text(json.dumps(record, indent=2))
    # The model appears last, whole, under its final name: a crash never leaves a loadable half-written tokenizer.
    partial = out_dir / f"{MODEL_FILE}.partial"
    partial.write_bytes(model.getvalue())
    partial.replace(out_dir / MODEL_FILE)
    return Tokenizer.load(out_dir)
