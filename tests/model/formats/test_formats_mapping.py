"""The weight-format tables are invertible: export then import gives back exactly the state dict (bitwise) for every
architecture each format supports, MoE included, both through the table alone and through the files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from slmtrain.model import presets
from slmtrain.model.formats.gguf import export_gguf, gguf_architecture, gguf_table, load_gguf
from slmtrain.model.formats.hf import export_hf, hf_architecture, hf_table, load_hf
from slmtrain.model.formats.mapping import export_tensors, import_tensors
from slmtrain.model.transformer import Transformer

MOE = dict(experts=4, top_k=2, expert_ffn_hidden=24)
SHARED = dict(MOE, shared_experts=1, shared_ffn_hidden=40, shared_gate=True)
# name -> (preset, overrides, the transformers architecture, the llama.cpp one or None where it has none)
ARCHITECTURES: dict[str, tuple[str, dict[str, Any], str, str | None]] = {
    "llama": ("tiny", dict(tie_embeddings=False), "llama", "llama"),
    "llama_tied_mha": ("tiny", dict(tie_embeddings=True, n_kv_head=None), "llama", "llama"),
    "qwen2": ("tiny", dict(qkv_bias=True), "qwen2", "qwen2"),
    "qwen3": ("tiny", dict(qk_norm=True, head_dim=32), "qwen3", "qwen3"),
    "mixtral": ("tiny-moe", dict(moe=MOE), "mixtral", "llama"),
    "olmoe_tied": ("tiny-moe", dict(qk_norm=True, qk_norm_scope="projection", n_kv_head=None, tie_embeddings=True,
                                    moe=dict(MOE, renormalize=False)), "olmoe", "olmoe"),
    "qwen2_moe": ("tiny-moe-shared", dict(qkv_bias=True, moe=dict(SHARED, renormalize=False, dense_layers=0)),
                  "qwen2_moe", "qwen2moe"),
    "qwen2_moe_dense_first": ("tiny-moe-shared", dict(n_layer=3, moe=dict(SHARED, dense_layers=1)), "qwen2_moe", None),
}


def random_model(name: str) -> Transformer:
    """Every tensor random (norms and routers included), so that a misplaced row or part cannot go unnoticed."""
    preset, overrides, _, _ = ARCHITECTURES[name]
    torch.manual_seed(0)
    model = Transformer(presets.get(preset, **{"vocab_size": 96, **overrides})).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p))
    return model


def assert_bitwise_equal(back: dict[str, torch.Tensor], original: dict[str, torch.Tensor]) -> None:
    assert back.keys() == original.keys()
    for key, tensor in original.items():
        assert back[key].dtype == tensor.dtype and torch.equal(back[key], tensor), key


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_hf_table_round_trips_bitwise(name: str, tmp_path: Path) -> None:
    model = random_model(name)
    config, state = model.config, model.state_dict()
    assert hf_architecture(config) == ARCHITECTURES[name][2]
    table = hf_table(config)
    exported = export_tensors(table, config, state)
    assert_bitwise_equal(import_tensors(table, config, exported.__getitem__), state)
    if config.moe is not None:  # experts one tensor each, as transformers saves them
        assert sum(".experts." in key for key in exported) == 3 * config.moe.experts * len(model.moe_layers())
    export_hf(model, tmp_path)
    assert_bitwise_equal(load_hf(tmp_path).state_dict(), state)


@pytest.mark.parametrize("name", [name for name, (*_, arch) in ARCHITECTURES.items() if arch is not None])
def test_gguf_table_round_trips_bitwise(name: str, tmp_path: Path) -> None:
    model = random_model(name)
    config, state = model.config, model.state_dict()
    arch = gguf_architecture(config)
    assert arch == ARCHITECTURES[name][3]
    table = gguf_table(config, arch)
    exported = export_tensors(table, config, state)
    assert_bitwise_equal(import_tensors(table, config, exported.__getitem__), state)
    if config.moe is not None:  # experts stacked, one 3D tensor each for gate, up and down
        assert sum("_exps." in key for key in exported) == 3 * len(model.moe_layers())
    export_gguf(model, tmp_path / "m.gguf", "f32")
    assert_bitwise_equal(load_gguf(tmp_path / "m.gguf")[0].state_dict(), state)
