"""Tokenizers of every kind GGUF export embeds, trained at test time on Python's own documentation."""

from __future__ import annotations

from pathlib import Path

import pydoc_data.topics

from slmtrain.artifacts import RunTokenizer, TokenizerInfo
from slmtrain.model.formats.gguf import IGNORES_MERGES, llama_cpp_pre_tokenizers
from slmtrain.model.formats.hf import export_hf
from slmtrain.tokenizer import TokenizerSpec, train_tokenizer
from tests.eval.eval_helpers import tiny_model

TEXTS = list(pydoc_data.topics.topics.values())
# Digits, contractions, case, runs of spaces and newlines, accents, emoji: where pre-tokenizers differ.
TRICKY_TEXT = ("Hello world! I've told HIM we'LL pay 1234567 or 3.14159 -- café naïve 😀 🦙🦙\n\n"
               "    def f(x):\n\treturn x  +  1   # done\r\n")
CHAT_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
# tiny_model overrides for each llama.cpp MoE architecture: Mixtral (llama with experts), OLMoE (QK-norm over the
# projections, top-k weights as they are), Qwen2-MoE (q/k/v biases, a gated shared expert)
MOE_ARCHITECTURES = {
    "llama": {"moe": {"experts": 4, "top_k": 2, "expert_ffn_hidden": 64}},
    "olmoe": {"qk_norm": True, "qk_norm_scope": "projection", "n_kv_head": 4,
              "moe": {"experts": 4, "top_k": 2, "expert_ffn_hidden": 64, "renormalize": False}},
    "qwen2moe": {"qkv_bias": True, "moe": {"experts": 4, "top_k": 2, "expert_ffn_hidden": 32, "shared_experts": 1,
                                           "shared_ffn_hidden": 64, "shared_gate": True, "renormalize": False}},
}


def sentencepiece_tokenizer(folder: Path) -> RunTokenizer:
    """An slmtrain SentencePiece tokenizer as a trained model's run presents it (documents start with EOS)."""
    inner = train_tokenizer(TokenizerSpec(vocab_size=512), TEXTS, folder)
    return RunTokenizer(inner, TokenizerInfo(inner.vocab_size, inner.eos_id, inner.eos_id, inner.bos_id))


def byte_level_bpe_model_dir(folder: Path, pre: str, vocab_size: int = 600, **model_overrides) -> Path:
    """A transformers directory: a tiny model and a byte-level BPE trained with llama.cpp's ``pre`` splitting,
    ChatML special tokens and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(ignore_merges=pre in IGNORES_MERGES))
    backend.pre_tokenizer = llama_cpp_pre_tokenizers()[pre]
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(TEXTS, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    model = tiny_model(vocab_size=len(tokenizer), **model_overrides)
    export_hf(model, folder, bos_id=tokenizer.bos_token_id, eos_id=tokenizer.eos_token_id)
    tokenizer.save_pretrained(str(folder))
    return folder
