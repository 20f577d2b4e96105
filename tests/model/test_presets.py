"""Presets reproduce the released checkpoints: the published parameter counts, and the shapes transformers itself
builds from the published config.json values."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import transformers

from slmtrain.model import presets
from slmtrain.model.config import ModelConfig
from slmtrain.model.formats.hf import model_config_from_hf
from slmtrain.model.transformer import Transformer

# Parameter counts of the released checkpoints (sum of the safetensors tensors; MobileLLM: paper, 124.6M / 345.3M).
PUBLISHED_PARAMS = {
    "smollm2-135m": 134_515_008,
    "smollm2-360m": 361_821_120,
    "smollm2-1.7b": 1_711_376_384,
    "mobilellm-125m": 124_635_456,
    "mobilellm-350m": 345_355_200,
    "tinyllama-1.1b": 1_100_048_384,
    "llama3.2-1b": 1_235_814_400,
    "llama3.2-3b": 3_212_749_824,
    "qwen2.5-0.5b": 494_032_768,
    "qwen2.5-1.5b": 1_543_714_304,
    # Mixture-of-Experts (every expert counted; active counts in tests/model/test_moe.py)
    "olmoe-1b-7b": 6_919_161_856,
    "qwen1.5-moe-a2.7b": 14_315_784_192,
    "mixtral-8x7b": 46_702_792_704,
}

# The shape-defining values of the published config.json files (HuggingFaceTB/SmolLM2-135M,
# TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T, meta-llama/Llama-3.2-1B, Qwen/Qwen2.5-0.5B).
PUBLISHED_CONFIGS: dict[str, tuple[type, dict[str, Any]]] = {
    "smollm2-135m": (transformers.LlamaConfig, dict(
        hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, intermediate_size=1536,
        vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0, rope_scaling=None,
        max_position_embeddings=8192, rms_norm_eps=1e-5, hidden_act="silu")),
    "tinyllama-1.1b": (transformers.LlamaConfig, dict(
        hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4, intermediate_size=5632,
        vocab_size=32000, tie_word_embeddings=False, rope_theta=10000.0, rope_scaling=None,
        max_position_embeddings=2048, rms_norm_eps=1e-5, hidden_act="silu")),
    "llama3.2-1b": (transformers.LlamaConfig, dict(
        hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, intermediate_size=8192,
        vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0, head_dim=64,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192},
        max_position_embeddings=131072, rms_norm_eps=1e-5, hidden_act="silu")),
    "qwen2.5-0.5b": (transformers.Qwen2Config, dict(
        hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, intermediate_size=4864,
        vocab_size=151936, tie_word_embeddings=True, rope_theta=1000000.0, rope_scaling=None,
        max_position_embeddings=32768, rms_norm_eps=1e-6, hidden_act="silu", use_sliding_window=False)),
}


def shape(config: ModelConfig) -> dict[str, Any]:
    """Everything that decides the weights and the function they compute (not init or backend choices)."""
    return dict(
        vocab_size=config.padded_vocab_size, n_layer=config.n_layer, d_model=config.d_model, n_head=config.n_head,
        kv_heads=config.kv_heads, head_dim=config.head_dim_, ffn_dim=config.ffn_dim, ffn=config.ffn, norm=config.norm,
        norm_eps=config.norm_eps, qk_norm=config.qk_norm, position=config.position, rope_theta=config.rope_theta,
        rope_scaling=config.rope_scaling, max_seq_len=config.max_seq_len, tie=config.tie_embeddings,
        qkv_bias=config.qkv_bias,
    )


def test_every_published_model_has_a_preset() -> None:
    assert set(PUBLISHED_PARAMS) <= set(presets.names())
    assert {"tiny", "demo-2m", "demo-5m"} <= set(presets.names())


@pytest.mark.parametrize("name", list(PUBLISHED_PARAMS))
def test_preset_reproduces_published_parameter_count(name: str) -> None:
    config = presets.get(name)
    assert config.params() == PUBLISHED_PARAMS[name]
    with torch.device("meta"):  # shapes only: a 3B model costs no memory
        model = Transformer(config)
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMS[name]


@pytest.mark.parametrize("name", list(PUBLISHED_CONFIGS))
def test_transformers_builds_the_same_model_from_the_published_config(name: str) -> None:
    config_cls, published = PUBLISHED_CONFIGS[name]
    hf_config = config_cls(**published)
    with torch.device("meta"):
        hf_model = transformers.AutoModelForCausalLM.from_config(hf_config)
    hf_params = sum(p.numel() for p in hf_model.parameters())  # tied weights are counted once
    assert hf_params == presets.get(name).params() == PUBLISHED_PARAMS[name]
    assert shape(model_config_from_hf(hf_config.to_dict())) == shape(presets.get(name))


def test_test_and_demo_presets_are_small() -> None:
    for name in set(presets.names()) - set(PUBLISHED_PARAMS):
        assert presets.get(name).params() < 10_000_000, name
