"""Named model configs: published small models with their released shapes, plus tiny sizes for tests and the demo.

A plain dict, as litgpt's ``name_to_config``: add a model by adding an entry. Every published entry reproduces the
released checkpoint's parameter count exactly (tests/model/test_presets.py holds the published counts).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from slmtrain.config import ConfigError, build, merge
from slmtrain.model.config import ModelConfig, MoEConfig, RopeScaling

_LLAMA3_ROPE = RopeScaling(kind="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_seq_len=8192)

PRESETS: dict[str, ModelConfig] = {
    # SmolLM2 (Hugging Face, 2024): Llama architecture, tied embeddings, 49152-token vocabulary.
    "smollm2-135m": ModelConfig(vocab_size=49152, n_layer=30, d_model=576, n_head=9, n_kv_head=3, ffn_hidden=1536,
                                rope_theta=100000.0, max_seq_len=8192),
    "smollm2-360m": ModelConfig(vocab_size=49152, n_layer=32, d_model=960, n_head=15, n_kv_head=5, ffn_hidden=2560,
                                rope_theta=100000.0, max_seq_len=8192),
    "smollm2-1.7b": ModelConfig(vocab_size=49152, n_layer=24, d_model=2048, n_head=32, n_kv_head=32, ffn_hidden=8192,
                                rope_theta=130000.0, max_seq_len=8192),
    # MobileLLM (Liu et al., 2024): deep-and-thin, GQA, embedding sharing.
    "mobilellm-125m": ModelConfig(vocab_size=32000, n_layer=30, d_model=576, n_head=9, n_kv_head=3, ffn_hidden=1536,
                                  max_seq_len=2048),
    "mobilellm-350m": ModelConfig(vocab_size=32000, n_layer=32, d_model=960, n_head=15, n_kv_head=5, ffn_hidden=2560,
                                  max_seq_len=2048),
    # TinyLlama 1.1B (Zhang et al., 2024): Llama 2 architecture, untied head.
    "tinyllama-1.1b": ModelConfig(vocab_size=32000, n_layer=22, d_model=2048, n_head=32, n_kv_head=4, ffn_hidden=5632,
                                  max_seq_len=2048, tie_embeddings=False),
    # Llama 3.2 (Meta, 2024): tied embeddings, llama3 RoPE scaling to 128k.
    "llama3.2-1b": ModelConfig(vocab_size=128256, n_layer=16, d_model=2048, n_head=32, n_kv_head=8, ffn_hidden=8192,
                               rope_theta=500000.0, rope_scaling=_LLAMA3_ROPE, max_seq_len=131072),
    "llama3.2-3b": ModelConfig(vocab_size=128256, n_layer=28, d_model=3072, n_head=24, n_kv_head=8, ffn_hidden=8192,
                               rope_theta=500000.0, rope_scaling=_LLAMA3_ROPE, max_seq_len=131072),
    # Qwen2.5 (Alibaba, 2024): q/k/v biases, tied embeddings at these sizes.
    "qwen2.5-0.5b": ModelConfig(vocab_size=151936, n_layer=24, d_model=896, n_head=14, n_kv_head=2, ffn_hidden=4864,
                                rope_theta=1000000.0, norm_eps=1e-6, qkv_bias=True, max_seq_len=32768),
    "qwen2.5-1.5b": ModelConfig(vocab_size=151936, n_layer=28, d_model=1536, n_head=12, n_kv_head=2, ffn_hidden=8960,
                                rope_theta=1000000.0, norm_eps=1e-6, qkv_bias=True, max_seq_len=32768),
    # Mixture-of-Experts: OLMoE (AI2, 2024: 64 experts, top-8, no renormalisation, QK-norm over the projections),
    # Qwen1.5-MoE (Alibaba, 2024: 60 experts, top-4, a gated shared expert 4x as wide), Mixtral (Mistral, 2023).
    "olmoe-1b-7b": ModelConfig(vocab_size=50304, n_layer=16, d_model=2048, n_head=16, ffn_hidden=1024, qk_norm=True,
                               qk_norm_scope="projection", max_seq_len=4096, tie_embeddings=False,
                               moe=MoEConfig(experts=64, top_k=8, renormalize=False, aux_loss_coef=0.01,
                                             z_loss_coef=0.001)),
    "qwen1.5-moe-a2.7b": ModelConfig(vocab_size=151936, n_layer=24, d_model=2048, n_head=16, ffn_hidden=5632,
                                     qkv_bias=True, rope_theta=1000000.0, norm_eps=1e-6, max_seq_len=8192,
                                     tie_embeddings=False,
                                     moe=MoEConfig(experts=60, top_k=4, expert_ffn_hidden=1408, shared_experts=1,
                                                   shared_ffn_hidden=5632, shared_gate=True, renormalize=False,
                                                   aux_loss_coef=0.001)),
    "mixtral-8x7b": ModelConfig(vocab_size=32000, n_layer=32, d_model=4096, n_head=32, n_kv_head=8, ffn_hidden=14336,
                                rope_theta=1000000.0, max_seq_len=32768, tie_embeddings=False,
                                moe=MoEConfig(experts=8, top_k=2, aux_loss_coef=0.02)),
    # Tiny sizes: unit tests (tiny*) and the CPU demo (demo-*); vocab is usually overridden by the tokenizer.
    "tiny": ModelConfig(vocab_size=256, n_layer=2, d_model=64, n_head=4, n_kv_head=2, ffn_hidden=128, max_seq_len=128),
    "tiny-mha": ModelConfig(vocab_size=256, n_layer=2, d_model=64, n_head=4, ffn_hidden=128, max_seq_len=128,
                            tie_embeddings=False),
    "tiny-moe": ModelConfig(vocab_size=256, n_layer=2, d_model=64, n_head=4, n_kv_head=2, ffn_hidden=128,
                            max_seq_len=128, moe=MoEConfig(experts=4, top_k=2, expert_ffn_hidden=64)),
    "tiny-moe-shared": ModelConfig(vocab_size=256, n_layer=3, d_model=64, n_head=4, ffn_hidden=128, qkv_bias=True,
                                   max_seq_len=128, tie_embeddings=False,
                                   moe=MoEConfig(experts=6, top_k=2, expert_ffn_hidden=32, shared_experts=1,
                                                 shared_ffn_hidden=64, shared_gate=True, dense_layers=1,
                                                 renormalize=False)),
    "demo-2m": ModelConfig(vocab_size=4096, n_layer=4, d_model=192, n_head=6, n_kv_head=2, ffn_hidden=512,
                           max_seq_len=256),
    "demo-5m": ModelConfig(vocab_size=4096, n_layer=6, d_model=256, n_head=8, n_kv_head=4, ffn_hidden=688,
                           max_seq_len=256),
    # demo-2m's shape with its FFN split DeepSeekMoE-style: one always-on shared expert of half its width plus 8
    # routed experts of a quarter, 2 per token: the same active parameters, ~2.5x the FFN weights.
    "demo-moe": ModelConfig(vocab_size=4096, n_layer=4, d_model=192, n_head=6, n_kv_head=2, ffn_hidden=256,
                            max_seq_len=256, moe=MoEConfig(experts=8, top_k=2, expert_ffn_hidden=128,
                                                           shared_experts=1, shared_ffn_hidden=256,
                                                           aux_loss_coef=0.01, z_loss_coef=0.001)),
}


def names() -> list[str]:
    return sorted(PRESETS)


def get(name: str, **overrides: Any) -> ModelConfig:
    """The named config (a fresh copy), with optional field overrides validated like any config; nested configs
    (``moe``, ``rope_scaling``) are overridden key by key."""
    if name not in PRESETS:
        raise ConfigError("model", f"unknown preset {name!r}; valid choices: {', '.join(names())}")
    return build(ModelConfig, merge(dataclasses.asdict(PRESETS[name]), overrides))


def resolve(spec: str | dict[str, Any] | ModelConfig) -> ModelConfig:
    """A model given as a preset name, a mapping with an optional ``preset`` key plus overrides, or a config."""
    if isinstance(spec, ModelConfig):
        return spec
    if isinstance(spec, str):
        return get(spec)
    fields = dict(spec)
    preset = fields.pop("preset", None)
    if preset is None:
        return build(ModelConfig, fields)
    if str(preset) not in PRESETS:
        raise ConfigError("preset", f"unknown preset {preset!r}; valid choices: {', '.join(names())}")
    return get(str(preset), **fields)


def expand_shorthand(argv: list[str]) -> list[str]:
    """Command lines say ``model=NAME model.KEY=VALUE``: the name is the preset the keys override. ``model=@FILE``
    names a codesign.json (launch/codesign.py): its recommended shape, every ModelConfig field given as a key, so
    nothing of a recipe's own preset is left over."""
    expanded = []
    for arg in argv:
        if arg.startswith("model=@"):
            expanded += [f"model.{key}={json.dumps(value)}"
                         for key, value in _dotted(recommended_shape(Path(arg[len("model=@"):])))]
        elif arg.startswith("model="):
            expanded.append(f"model.preset={arg[len('model='):]}")
        else:
            expanded.append(arg)
    return expanded


def recommended_shape(path: Path) -> dict[str, Any]:
    """The ModelConfig fields of the shape a codesign.json recommends."""
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
        config = next(r for r in result["candidates"] if r["name"] == result["recommended"])["config"]
        build(ModelConfig, config)  # a shape that does not validate is refused here, naming the file
    except (OSError, ValueError, KeyError, TypeError, StopIteration) as e:
        raise ConfigError("model", f"{path}: not a codesign.json with a recommended shape "
                                   f"({type(e).__name__}: {e})") from None
    return config


def _dotted(mapping: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    return [pair for key, value in mapping.items()
            for pair in (_dotted(value, f"{prefix}{key}.") if isinstance(value, dict) else [(f"{prefix}{key}", value)])]
