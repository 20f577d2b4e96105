"""Exported GGUF files run in llama.cpp itself (llama-cpp-python): it tokenizes like the model's own tokenizer and,
from an f16 export, computes slmtrain's logits and greedy continuation, for every architecture (Mixture-of-Experts
ones included) and tokenizer kind."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slmtrain.artifacts import load_model
from slmtrain.eval.llamacpp import greedy, open_gguf, prompt_logits
from slmtrain.model.config import RopeScaling
from slmtrain.model.formats.gguf import export_gguf
from tests.eval.eval_helpers import tiny_model
from tests.model.formats.gguf_helpers import MOE_ARCHITECTURES, TRICKY_TEXT, byte_level_bpe_model_dir, sentencepiece_tokenizer

ARCHITECTURES = {"llama": {}, "qwen2": {"qkv_bias": True}, "qwen3": {"qk_norm": True, "head_dim": 32}}
SHARP = {"init_std": 0.3}  # random weights this large give a greedy continuation that is not one repeated token
NEW_TOKENS = 16


@pytest.fixture(scope="module")
def sentencepiece(tmp_path_factory):
    return sentencepiece_tokenizer(tmp_path_factory.mktemp("sp"))


def assert_runs_like_slmtrain(path, model, prompt: list[int]) -> None:
    """llama.cpp's logits and greedy continuation of ``prompt`` are slmtrain's, up to f16 rounding: every token it
    picks is slmtrain's argmax there, or within rounding of it (random weights have near-ties; the real model's
    continuation is compared token for token in test_gguf_smollm2.py)."""
    llm = open_gguf(path, threads=1, context=model.config.max_seq_len, all_logits=True)
    logits = model(torch.tensor([prompt]))[0].detach().numpy()
    rounding = 0.02 * np.abs(logits).max()
    assert np.abs(prompt_logits(llm, prompt) - logits).max() < rounding
    continuation = greedy(llm, prompt, NEW_TOKENS)
    llm.close()
    steps = model(torch.tensor([prompt + continuation]))[0, len(prompt) - 1 : -1].detach()
    chosen = steps.gather(1, torch.tensor(continuation)[:, None])[:, 0]
    assert (steps.max(dim=1).values - chosen < rounding).all()
    assert (steps.argmax(dim=1) == torch.tensor(continuation)).sum() >= NEW_TOKENS - 2
    assert len(set(continuation)) > NEW_TOKENS // 2  # a varied continuation: the comparison can fail


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_an_slmtrain_sentencepiece_model_runs_in_llama_cpp(tmp_path, sentencepiece, arch):
    model = tiny_model(vocab_size=512, tie_embeddings=arch != "qwen2", **SHARP, **ARCHITECTURES[arch])
    export_gguf(model, tmp_path / "m.gguf", "f16", sentencepiece)
    llm = open_gguf(tmp_path / "m.gguf", threads=1)
    ids = llm.tokenize(TRICKY_TEXT.encode(), add_bos=True, special=False)
    llm.close()
    # llama.cpp starts the document with EOS, as the model was trained, then SentencePiece's own pieces
    assert ids == [sentencepiece.eos_id] + sentencepiece.encode(TRICKY_TEXT)
    assert_runs_like_slmtrain(tmp_path / "m.gguf", model, ids[:24])


@pytest.mark.parametrize("pre,arch", [("gpt-2", "llama"), ("smollm", "llama"), ("llama-bpe", "llama"),
                                      ("qwen2", "qwen2")])
def test_a_byte_level_bpe_model_runs_in_llama_cpp_and_tokenizes_like_transformers(tmp_path, pre, arch):
    loaded = load_model(byte_level_bpe_model_dir(tmp_path / "hf", pre, **SHARP, **ARCHITECTURES[arch]))
    export_gguf(loaded.model, tmp_path / "m.gguf", "f16", loaded.tokenizer)
    llm = open_gguf(tmp_path / "m.gguf", threads=1)
    inner = loaded.tokenizer.inner
    assert llm.tokenize(TRICKY_TEXT.encode(), add_bos=True, special=False) == inner.encode(TRICKY_TEXT)
    chat = "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n"
    assert llm.tokenize(chat.encode(), add_bos=False, special=True) == inner.encode(chat)
    llm.close()
    assert_runs_like_slmtrain(tmp_path / "m.gguf", loaded.model, inner.encode(TRICKY_TEXT)[:24])


def test_a_model_without_tokenizer_runs_on_token_ids(tmp_path):
    model = tiny_model(**SHARP)
    summary = export_gguf(model, tmp_path / "m.gguf", "f16")
    assert summary["vocabulary"].startswith("none")
    assert_runs_like_slmtrain(tmp_path / "m.gguf", model, [5, 80, 200, 7, 9, 100])


def test_llama3_rope_scaling_runs_in_llama_cpp_and_imports_back(tmp_path):
    """llama.cpp applies the exported rope_freqs as slmtrain scales its frequencies, and the import recovers the
    scaling from them."""
    scaling = RopeScaling(kind="llama3", factor=8.0, original_max_seq_len=64)
    model = tiny_model(**SHARP, rope_scaling=scaling)
    export_gguf(model, tmp_path / "m.gguf", "f16")
    prompt = [(37 * k) % 250 for k in range(40)]
    unscaled = tiny_model(**SHARP)(torch.tensor([prompt]))[0].detach()
    assert (unscaled - model(torch.tensor([prompt]))[0].detach()).abs().max() > 0.1 * unscaled.abs().max()
    assert_runs_like_slmtrain(tmp_path / "m.gguf", model, prompt)
    assert load_model(tmp_path / "m.gguf").model.config.rope_scaling == scaling


@pytest.mark.parametrize("arch", MOE_ARCHITECTURES)
def test_an_moe_model_runs_in_llama_cpp(tmp_path, arch):
    model = tiny_model(**SHARP, **MOE_ARCHITECTURES[arch])  # tied: olmoe and qwen2moe get a copied output matrix
    summary = export_gguf(model, tmp_path / "m.gguf", "f16")
    assert summary["architecture"] == arch
    assert_runs_like_slmtrain(tmp_path / "m.gguf", model, [5, 80, 200, 7, 9, 100, 31, 64, 150, 2, 222, 18])


@pytest.mark.parametrize("quant", ["q8_0", "q4_0"])
@pytest.mark.parametrize("arch", MOE_ARCHITECTURES)
def test_a_quantised_moe_model_runs_in_llama_cpp_like_its_dequantised_weights(tmp_path, arch, quant):
    """llama.cpp also rounds the activations to 8 bits against quantised weights, and a near-tie between experts
    can route a token differently, so the logits agree within a few percent (a wrong tensor layout: ~100%)."""
    model = tiny_model(**SHARP, **MOE_ARCHITECTURES[arch])
    summary = export_gguf(model, tmp_path / "m.gguf", quant)
    assert summary["architecture"] == arch
    prompt = [5, 80, 200, 7, 9, 100, 31, 64, 150, 2, 222, 18]
    dequantised = load_model(tmp_path / "m.gguf").model(torch.tensor([prompt]))[0].detach().numpy()
    llm = open_gguf(tmp_path / "m.gguf", threads=1, context=model.config.max_seq_len, all_logits=True)
    logits = prompt_logits(llm, prompt)
    llm.close()
    assert np.sqrt(((logits - dequantised) ** 2).mean() / (dequantised ** 2).mean()) < 0.1
    assert (logits.argmax(axis=1) == dequantised.argmax(axis=1)).sum() >= len(prompt) - 2
