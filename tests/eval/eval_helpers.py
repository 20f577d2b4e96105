"""Tiny random models and byte-level tokenizers: everything the evaluation tests need, built offline."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from slmtrain.model import presets
from slmtrain.model.transformer import Transformer

BOS, EOS = 256, 257
FIXTURES = Path(__file__).resolve().parent / "data"  # small task files in the datasets' formats, written here


class ByteTokenizer:
    """UTF-8 bytes are ids 0..255; BOS and EOS follow. Encodes without special tokens, like the project's."""

    bos_id: int | None = BOS
    eos_id: int | None = EOS

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def tiny_model(seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(presets.get("tiny", **{"vocab_size": 258, **overrides})).eval()


def save_byte_level_hf_tokenizer(out_dir: Path) -> None:
    """A byte-level BPE without merges whose ids match ByteTokenizer's (bytes 0..255, then <s>, </s>)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_to_char = dict(zip(range(256), _bytes_to_unicode()))
    assert set(byte_to_char.values()) == set(pre_tokenizers.ByteLevel.alphabet())
    vocab = {byte_to_char[b]: b for b in range(256)} | {"<s>": BOS, "</s>": EOS}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>").save_pretrained(str(out_dir))


def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte -> printable character table, in byte order."""
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) | set(range(ord("®"), 256))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars
