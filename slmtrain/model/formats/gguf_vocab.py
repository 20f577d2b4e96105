"""GGUF vocabularies, apart from the weights: a tokenizer embedded in a GGUF file as llama.cpp reads it, and the
tokenizer rebuilt from a file's vocabulary.

A SentencePiece model becomes llama.cpp's ``llama`` vocabulary; a Hugging Face byte-level BPE becomes ``gpt2`` with
its merges and the llama.cpp pre-tokenizer whose splitting it uses. The document-start token is the one the model
was trained with (slmtrain's own models see EOS before every document). No tokenizer: ``none``, token ids only.
Anything else is an error naming it.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import gguf

from slmtrain.config import ConfigError, UserError

TOKENIZER_KEY_PREFIX = "tokenizer."
IGNORES_MERGES = ("llama-bpe",)  # llama.cpp looks whole words up in the vocabulary first, as Llama 3's tokenizer


def llama_cpp_pre_tokenizers() -> dict[str, Any]:
    """llama.cpp pre-tokenizer name -> the ``tokenizers`` pre-tokenizer that splits text the same way (llama.cpp's
    src/llama-vocab.cpp holds the regexes; these are the published tokenizer.json originals)."""
    from tokenizers import Regex, pre_tokenizers as pre

    def split_then_bytes(pattern: str) -> Any:
        return pre.Sequence([pre.Split(Regex(pattern), behavior="isolated", invert=False),
                             pre.ByteLevel(add_prefix_space=False, use_regex=False)])

    words = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"
    rest = r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    return {
        "gpt-2": pre.ByteLevel(add_prefix_space=False, use_regex=True),
        "smollm": pre.Sequence([pre.Digits(individual_digits=True), pre.ByteLevel(add_prefix_space=False)]),
        "llama-bpe": split_then_bytes(words + r"\p{N}{1,3}" + rest),  # Llama 3
        "qwen2": split_then_bytes(words + r"\p{N}" + rest),  # Qwen2, Qwen2.5, Qwen3
    }


def _splitting(pre_tokenizer: dict[str, Any] | None) -> Any:
    """A serialised pre-tokenizer without the keys that only change offsets, so equal splitting compares equal."""
    if isinstance(pre_tokenizer, dict):
        return {k: _splitting(v) for k, v in pre_tokenizer.items() if k != "trim_offsets"}
    if isinstance(pre_tokenizer, list):
        return [_splitting(v) for v in pre_tokenizer]
    return pre_tokenizer


def add_vocabulary(writer: gguf.GGUFWriter, tokenizer: Any, vocab_size: int) -> str:
    """Embed ``tokenizer`` as llama.cpp reads it; returns what was embedded."""
    if tokenizer is None:
        writer.add_tokenizer_model("none")
        return "none (no tokenizer: llama.cpp runs token ids only)"
    metadata = getattr(tokenizer, "gguf_metadata", None)  # imported from a GGUF: its vocabulary, unchanged
    if metadata is not None:
        for key, (value, value_type, sub_type) in metadata.items():
            writer.add_key_value(key, value, value_type, sub_type)
        return f"{metadata['tokenizer.ggml.model'][0]} vocabulary of the imported GGUF"
    processor = getattr(tokenizer, "processor", None)  # slmtrain's tokenizers and exports carry SentencePiece
    if processor is not None:
        return _add_sentencepiece(writer, tokenizer, processor, vocab_size)
    inner = getattr(tokenizer, "inner", None)  # a transformers tokenizer (HFTokenizer)
    if getattr(inner, "backend_tokenizer", None) is not None:
        return _add_byte_level_bpe(writer, tokenizer, inner, vocab_size)
    raise ConfigError("tokenizer", f"{type(tokenizer).__name__} cannot be embedded in GGUF: llama.cpp reads "
                                   f"SentencePiece and Hugging Face byte-level BPE tokenizers")


def _add_sentencepiece(writer: gguf.GGUFWriter, tokenizer: Any, processor: Any, vocab_size: int) -> str:
    from sentencepiece import sentencepiece_model_pb2

    if processor.vocab_size() != vocab_size:
        raise ConfigError("tokenizer", f"tokenizer has {processor.vocab_size()} pieces, the model {vocab_size} rows")
    proto = sentencepiece_model_pb2.ModelProto.FromString(processor.serialized_model_proto())
    pieces = range(processor.vocab_size())
    kinds = [gguf.TokenType.UNKNOWN if processor.is_unknown(i) else gguf.TokenType.CONTROL if processor.is_control(i)
             else gguf.TokenType.BYTE if processor.is_byte(i) else gguf.TokenType.UNUSED if processor.is_unused(i)
             else gguf.TokenType.NORMAL for i in pieces]
    writer.add_tokenizer_model("llama")
    writer.add_token_list([processor.id_to_piece(i) for i in pieces])
    writer.add_token_scores([processor.get_score(i) for i in pieces])
    writer.add_token_types(kinds)
    writer.add_add_space_prefix(proto.normalizer_spec.add_dummy_prefix)
    ids = _document_tokens(tokenizer) | {"unk": processor.unk_id(), "pad": processor.pad_id()}
    for kind, token in ids.items():
        if token >= 0:
            getattr(writer, f"add_{kind}_token_id")(token)
    writer.add_add_bos_token("bos" in ids)  # a document-start token is always prepended, as in training
    writer.add_add_eos_token(False)
    template = getattr(getattr(tokenizer, "inner", None), "chat_template", None)
    if template:
        writer.add_chat_template(template)
    return "sentencepiece (llama)"


def _add_byte_level_bpe(writer: gguf.GGUFWriter, tokenizer: Any, inner: Any, vocab_size: int) -> str:
    backend = json.loads(inner.backend_tokenizer.to_str())
    model, decoder = backend["model"], backend.get("decoder") or {}
    if model["type"] != "BPE" or model.get("byte_fallback") or decoder.get("type") != "ByteLevel":
        raise ConfigError("tokenizer", f"a {model['type']} tokenizer with a {decoder.get('type')} decoder cannot be "
                                       "embedded in GGUF: llama.cpp reads byte-level BPE and SentencePiece")
    splitting = _splitting(backend.get("pre_tokenizer"))
    pre = next((name for name, candidate in llama_cpp_pre_tokenizers().items()
                if _splitting(json.loads(candidate.__getstate__())) == splitting), None)
    if pre is None:
        raise ConfigError("tokenizer", f"pre-tokenizer {json.dumps(backend.get('pre_tokenizer'))[:200]} has no "
                                       "llama.cpp equivalent (known: GPT-2, SmolLM, Llama 3, Qwen2)")
    whole_words_first = pre in IGNORES_MERGES
    if bool(model.get("ignore_merges")) != whole_words_first:
        behaviour = "looks whole words up before merging" if whole_words_first else "always merges"
        raise ConfigError("tokenizer", f"llama.cpp's {pre} pre-tokenizer {behaviour}; this tokenizer has "
                                       f"ignore_merges={bool(model.get('ignore_merges'))}")
    if len(inner) > vocab_size:
        raise ConfigError("tokenizer", f"tokenizer has {len(inner)} tokens, the model {vocab_size} rows")
    special = {i for i, token in inner.added_tokens_decoder.items() if token.special}
    added = set(inner.added_tokens_decoder)
    tokens = inner.convert_ids_to_tokens(list(range(vocab_size)))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list([token if token is not None else f"[PAD{i}]" for i, token in enumerate(tokens)])
    writer.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.USER_DEFINED
                            if i in added or tokens[i] is None else gguf.TokenType.NORMAL for i in range(vocab_size)])
    with tempfile.TemporaryDirectory() as saved:  # SpecialVocab reads merges, pad/unk and the chat template from files
        inner.save_pretrained(saved)
        vocab = gguf.SpecialVocab(saved, load_merges=True, n_vocab=vocab_size)
    vocab.special_token_ids |= _document_tokens(tokenizer)
    bos = vocab.special_token_ids.get("bos")  # prepended when the Hugging Face tokenizer prepends it
    vocab.add_special_token = {"bos": bos is not None and inner.encode("a", add_special_tokens=True)[:1] == [bos],
                               "eos": False}
    vocab.add_to_gguf(writer, quiet=True)
    return f"byte-level BPE (gpt2, pre-tokenizer {pre})"


def _document_tokens(tokenizer: Any) -> dict[str, int]:
    """BOS and EOS as the model uses them: ``tokenizer.bos_id`` is the document-start token (EOS for slmtrain's own
    models, which see EOS before every document)."""
    return {kind: int(token) for kind, token in (("bos", tokenizer.bos_id), ("eos", tokenizer.eos_id))
            if token is not None and token >= 0}


def gguf_field(reader: gguf.GGUFReader, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def gguf_tokenizer(reader: gguf.GGUFReader, path: Path) -> GGUFTokenizer | None:
    kind = gguf_field(reader, "tokenizer.ggml.model")
    if kind in (None, "none", "no_vocab"):
        return None
    if kind not in ("llama", "gpt2"):
        raise UserError(f"{path}: unsupported tokenizer model {kind!r}; supported: llama (SentencePiece), gpt2 (BPE)")
    pre = gguf_field(reader, "tokenizer.ggml.pre", "default")
    pre_tokenizers = llama_cpp_pre_tokenizers()
    if kind == "gpt2" and pre not in pre_tokenizers:
        raise UserError(f"{path}: unsupported BPE pre-tokenizer {pre!r}; supported: {', '.join(pre_tokenizers)}")
    metadata = {name: (field.contents(), field.types[0], field.types[-1] if len(field.types) > 1 else None)
                for name, field in reader.fields.items() if name.startswith(TOKENIZER_KEY_PREFIX)}
    return GGUFTokenizer(path, metadata, pre_tokenizers.get(pre) if kind == "gpt2" else None)


class GGUFTokenizer:
    """A GGUF file's tokenizer: transformers rebuilds it from the vocabulary for encoding (the pre-tokenizer set to
    llama.cpp's named one), and GGUF export embeds the original metadata unchanged."""

    def __init__(self, path: Path, metadata: dict[str, tuple[Any, gguf.GGUFValueType, Any]], pre_tokenizer: Any):
        from transformers import AutoTokenizer

        self.inner = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
        if pre_tokenizer is not None:
            self.inner.backend_tokenizer.pre_tokenizer = pre_tokenizer
        self.gguf_metadata = metadata
        self.bos_id = metadata.get("tokenizer.ggml.bos_token_id", (None,))[0]
        self.eos_id = metadata.get("tokenizer.ggml.eos_token_id", (None,))[0]

    def encode(self, text: str) -> list[int]:
        return self.inner.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self.inner.decode(ids, skip_special_tokens=True)
