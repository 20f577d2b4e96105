"""ModelConfig: the accounting computed from the config alone agrees with real models, and bad configs fail early.

Every accounting number is checked against something measured independently: parameter counts against an
instantiated model, FLOPs against torch's FlopCounterMode, KV bytes against an allocated KVCache.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from slmtrain.config import ConfigError, build
from slmtrain.model import presets
from slmtrain.model.config import ModelConfig
from slmtrain.model.transformer import KVCache, Transformer

SMALL: dict[str, Any] = dict(vocab_size=300, n_layer=2, d_model=48, n_head=4, ffn_hidden=80, max_seq_len=64)

VARIANTS: dict[str, dict[str, Any]] = {
    "mha": {},
    "gqa": dict(n_kv_head=2),
    "mqa": dict(n_kv_head=1),
    "untied": dict(tie_embeddings=False),
    "qkv_bias": dict(qkv_bias=True, n_kv_head=2),
    "qk_norm": dict(qk_norm=True),
    "qk_norm_layernorm": dict(qk_norm=True, norm="layernorm"),
    "layernorm": dict(norm="layernorm"),
    "learned_positions": dict(position="learned", tie_embeddings=False),
    "geglu": dict(ffn="geglu"),
    "gelu": dict(ffn="gelu"),
    "relu": dict(ffn="relu", ffn_hidden=None, ffn_mult=3.0, ffn_multiple_of=32),
    "ffn_mult_default": dict(ffn_hidden=None),
    "vocab_padding": dict(vocab_multiple_of=64),
    "explicit_head_dim": dict(n_head=3, n_kv_head=1, head_dim=32),
    "everything": dict(n_kv_head=2, tie_embeddings=False, qkv_bias=True, qk_norm=True, vocab_multiple_of=128,
                       head_dim=8, ffn="geglu"),
}


def small(**overrides: Any) -> ModelConfig:
    return build(ModelConfig, {**SMALL, **overrides})


def norm_params(model: nn.Module) -> int:
    return sum(p.numel() for m in model.modules() if isinstance(m, (nn.RMSNorm, nn.LayerNorm)) for p in m.parameters())


@pytest.mark.parametrize("name", list(VARIANTS))
def test_params_equal_an_instantiated_model(name: str) -> None:
    config = small(**VARIANTS[name])
    model = Transformer(config)
    assert config.params() == sum(p.numel() for p in model.parameters())  # parameters() counts tied weights once
    tables = [model.embed.weight] + ([] if config.tie_embeddings else [model.lm_head.weight])
    tables += [model.pos_embed.weight] if model.pos_embed is not None else []
    assert config.embedding_params() == sum(t.numel() for t in tables)
    assert config.non_embedding_params() == config.params() - config.embedding_params()


def test_derived_sizes() -> None:
    assert small(ffn_hidden=None).ffn_dim == 128  # 8/3 * 48 = 128 exactly
    assert small(ffn_hidden=None, ffn_multiple_of=96).ffn_dim == 192
    assert small(ffn_hidden=None, ffn="gelu").ffn_dim == 192  # plain MLPs default to 4x
    assert small(vocab_multiple_of=64).padded_vocab_size == 320
    assert small(n_head=3, head_dim=32).head_dim_ == 32
    assert small().kv_heads == 4 and small(n_kv_head=1).kv_heads == 1


def test_vocab_padding_adds_rows_but_logits_keep_the_vocabulary() -> None:
    config = small(vocab_multiple_of=64)
    model = Transformer(config)
    assert model.embed.weight.shape[0] == 320
    assert model(torch.randint(0, 300, (1, 5))).shape == (1, 5, 300)
    assert config.params() - small().params() == 20 * config.d_model  # tied: the padding rows count once


@pytest.mark.parametrize("name", ["mha", "gqa", "untied", "learned_positions", "gelu", "vocab_padding"])
def test_train_flops_match_flop_counter(name: str) -> None:
    """Measured matmul FLOPs of forward + backward (eager attention, so QK^T and AV are counted over the full
    T x T matrix) equal the 6N + attention formula; norm weights are in N but do no matmul."""
    config = small(**VARIANTS[name], attention_backend="eager")
    model = Transformer(config)
    batch, seq = 2, 32
    ids = torch.randint(0, config.vocab_size, (batch, seq))
    with FlopCounterMode(display=False) as forward_counter:
        model(ids)
    with FlopCounterMode(display=False) as train_counter:
        model(ids).square().mean().backward()
    tokens = batch * seq
    forward = tokens * (2 * (config.matmul_params() - norm_params(model)) + config.attention_flops_per_token(seq))
    assert forward_counter.get_total_flops() == forward
    train = tokens * (config.train_flops_per_token(seq) - 6 * norm_params(model))
    assert train_counter.get_total_flops() == train


def test_flops_formula_pieces() -> None:
    config = small(n_kv_head=2)
    n, attention = config.matmul_params(), 4 * config.n_layer * config.n_head * config.head_dim_
    assert n == config.non_embedding_params() + config.padded_vocab_size * config.d_model
    assert config.train_flops_per_token(100) == 6 * n + 3 * attention * 100
    assert config.train_flops_per_token() == config.train_flops_per_token(config.max_seq_len)
    assert config.inference_flops_per_token(100) == 2 * n + attention * 100
    # The output head does the same matmul tied or not; learned positions are a lookup, not a matmul.
    assert small(tie_embeddings=False).matmul_params() == small().matmul_params()
    assert small(position="learned").train_flops_per_token(32) == small().train_flops_per_token(32)
    # GQA saves projection FLOPs but not attention FLOPs (every query head still attends).
    assert small(n_kv_head=1).attention_flops_per_token(64) == small().attention_flops_per_token(64)
    assert small(n_kv_head=1).matmul_params() < small().matmul_params()


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_kv_cache_bytes_match_an_allocated_cache(kv_heads: int) -> None:
    config = small(n_kv_head=kv_heads)
    for dtype, size in ((torch.bfloat16, 2), (torch.float32, 4)):
        cache = KVCache(config, batch=1, max_len=16, device=torch.device("cpu"), dtype=dtype)
        allocated = cache.keys.numel() * cache.keys.element_size() + cache.values.numel() * cache.values.element_size()
        assert config.kv_cache_bytes_per_token(size) == allocated / 16
    assert config.kv_cache_bytes_per_token() == config.kv_cache_bytes_per_token(2.0)


def test_gqa_shrinks_kv_cache_by_head_ratio() -> None:
    mha = presets.get("tinyllama-1.1b", n_kv_head=None)
    gqa = presets.get("tinyllama-1.1b")
    assert mha.kv_cache_bytes_per_token() / gqa.kv_cache_bytes_per_token() == gqa.n_head / gqa.kv_heads == 8
    assert mha.kv_cache_bytes_per_token() == 2 * 22 * 2048 * 2  # K and V, every layer, full width, bf16


def test_weight_bytes() -> None:
    config = small(n_kv_head=2, tie_embeddings=False)
    model = Transformer(config).to(torch.bfloat16)
    assert config.weight_bytes("bf16") == sum(p.numel() * p.element_size() for p in model.parameters())
    assert config.weight_bytes("fp32") == 4 * config.params()
    assert config.weight_bytes("int8") == config.params()
    assert config.weight_bytes("int4") == config.params() / 2
    with pytest.raises(ConfigError, match="precision.*valid choices: fp32, bf16, fp16, int8, int4"):
        config.weight_bytes("int3")


# ---------------------------------------------------------------------------------------------------- bad configs
@pytest.mark.parametrize(
    ("overrides", "key", "message"),
    [
        (dict(d_model=66, n_head=4), "n_head", "d_model=66 is not divisible by n_head=4; valid n_head values: 1, 2, 3"),
        (dict(n_head=4, n_kv_head=3), "n_kv_head", "valid n_kv_head values: 1, 2, 4"),
        (dict(n_kv_head=0), "n_kv_head", "must be positive"),
        (dict(vocab_size=-5), "vocab_size", "must be positive, got -5"),
        (dict(n_layer=0), "n_layer", "must be positive"),
        (dict(d_model=-48), "d_model", "must be positive"),
        (dict(n_head=-4), "n_head", "must be positive"),
        (dict(max_seq_len=0), "max_seq_len", "must be positive"),
        (dict(ffn_hidden=-1), "ffn_hidden", "must be positive"),
        (dict(ffn_hidden=None, ffn_mult=-2.0), "ffn_mult", "must be positive"),
        (dict(head_dim=-8), "head_dim", "must be positive"),
        (dict(head_dim=7), "head_dim", "RoPE needs an even head dimension"),
        (dict(vocab_multiple_of=0), "vocab_multiple_of", "must be positive"),
        (dict(norm_eps=0.0), "norm_eps", "must be positive"),
        (dict(init_std=-0.02), "init_std", "must be positive"),
        (dict(rope_theta=-1.0), "rope_theta", "must be positive"),
        (dict(ffn="swish"), "ffn", "valid choices: swiglu, geglu, gelu, relu"),
        (dict(norm="batchnorm"), "norm", "valid choices: rmsnorm, layernorm"),
        (dict(position="alibi"), "position", "valid choices: rope, learned"),
        (dict(attention_backend="xformers"), "attention_backend", "valid choices: sdpa, flash, eager"),
        (dict(rope_scaling={"kind": "yarn"}), "rope_scaling.kind", "valid choices: none, linear, llama3"),
        (dict(rope_scaling={"kind": "linear", "factor": 0.5}), "rope_scaling.factor", "must be >= 1"),
        (dict(n_heads=4), "n_heads", "unknown key; valid keys: attention_backend, d_model, ffn"),
        (dict(tie_embeddings="maybe"), "tie_embeddings", "expected true or false"),
        (dict(n_layer="two"), "n_layer", "expected a number"),
    ],
)
def test_invalid_config_fails_at_construction(overrides: dict[str, Any], key: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build(ModelConfig, {**SMALL, **overrides})
    assert info.value.key == key
    assert message in str(info.value)
    assert str(info.value).startswith(f"{key}: ")


def test_direct_construction_validates_too() -> None:
    with pytest.raises(ConfigError, match="n_kv_head: n_head=9 is not divisible by n_kv_head=2"):
        ModelConfig(d_model=576, n_head=9, n_kv_head=2)


def test_unknown_preset_lists_the_presets() -> None:
    with pytest.raises(ConfigError) as info:
        presets.get("smollm3-135m")
    assert info.value.key == "model"
    assert "unknown preset 'smollm3-135m'" in str(info.value)
    assert "valid choices: " + ", ".join(presets.names()) in str(info.value)


def test_preset_overrides_are_validated() -> None:
    with pytest.raises(ConfigError, match="n_kv_head: .*valid n_kv_head values: 1, 3, 9"):
        presets.get("smollm2-135m", n_kv_head=2)
    with pytest.raises(ConfigError, match="unknown key"):
        presets.get("tiny", layers=3)
    assert presets.get("tiny", n_layer=3).n_layer == 3
    assert presets.get("tiny").n_layer == 2  # overrides never leak into the registry


def test_resolve_accepts_name_mapping_or_config() -> None:
    assert presets.resolve("tiny") == presets.get("tiny")
    assert presets.resolve({"preset": "tiny", "n_layer": 1}).n_layer == 1
    assert presets.resolve({**SMALL}) == small()
    config = small()
    assert presets.resolve(config) is config
