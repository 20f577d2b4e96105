"""Hugging Face interop: export to a directory transformers loads (config.json + model.safetensors), and import
Llama / Qwen2 / Qwen3 directories (SmolLM, TinyLlama, MobileLLM-as-Llama...) saved by transformers.

Architecture choice on export: q/k/v biases need Qwen2, QK-norm needs Qwen3, everything else is Llama. Only
safetensors are read (no pickles) and no remote code ever runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file, save_file

from slmtrain.config import ConfigError, UserError
from slmtrain.model.config import ModelConfig, RopeScaling
from slmtrain.model.transformer import Transformer, rope_inverse_frequencies

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3")
SUPPORTED_ACTIVATIONS = {"silu": "swiglu", "gelu_pytorch_tanh": "geglu"}
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


class HFTokenizerWriter(Protocol):
    def save_hf(self, out_dir: str | Path) -> None: ...


# --------------------------------------------------------------------------------------------------------- export
def hf_architecture(config: ModelConfig) -> str:
    """The transformers model_type that represents ``config`` exactly; ConfigError naming what has no equivalent."""
    unsupported = []
    if config.norm != "rmsnorm":
        unsupported.append(f"norm={config.norm} (needs rmsnorm)")
    if config.position != "rope":
        unsupported.append(f"position={config.position} (needs rope)")
    if config.ffn not in ("swiglu", "geglu"):
        unsupported.append(f"ffn={config.ffn} (needs swiglu or geglu)")
    if config.qk_norm and config.qkv_bias:
        unsupported.append("qk_norm together with qkv_bias")
    if unsupported:
        raise ConfigError("model", "no Hugging Face architecture for " + ", ".join(unsupported))
    return "qwen3" if config.qk_norm else "qwen2" if config.qkv_bias else "llama"


def hf_config(config: ModelConfig, bos_id: int | None = None, eos_id: int | None = None):
    """A transformers config object of the installed version (its own defaults and key names)."""
    import transformers

    model_type = hf_architecture(config)
    cls = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config, "qwen3": transformers.Qwen3Config}
    rope_scaling: dict[str, Any] | None = None
    if config.rope_scaling.kind == "linear":
        rope_scaling = {"rope_type": "linear", "factor": config.rope_scaling.factor}
    elif config.rope_scaling.kind == "llama3":
        rope_scaling = {
            "rope_type": "llama3",
            "factor": config.rope_scaling.factor,
            "low_freq_factor": config.rope_scaling.low_freq_factor,
            "high_freq_factor": config.rope_scaling.high_freq_factor,
            "original_max_position_embeddings": config.rope_scaling.original_max_seq_len,
        }
    kwargs: dict[str, Any] = dict(
        vocab_size=config.vocab_size,  # padded rows are never trained: the export drops them
        hidden_size=config.d_model,
        intermediate_size=config.ffn_dim,
        num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head,
        num_key_value_heads=config.kv_heads,
        head_dim=config.head_dim_,
        hidden_act="silu" if config.ffn == "swiglu" else "gelu_pytorch_tanh",
        max_position_embeddings=config.max_seq_len,
        rms_norm_eps=config.norm_eps,
        tie_word_embeddings=config.tie_embeddings,
        rope_theta=config.rope_theta,
        rope_scaling=rope_scaling,
        initializer_range=config.init_std,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
    )
    if model_type == "llama":
        kwargs.update(attention_bias=False, mlp_bias=False)
    if model_type == "qwen3":
        kwargs.update(attention_bias=False)
    hf = cls[model_type](**kwargs)
    hf.architectures = [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[model_type]]
    return hf


def to_hf_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """slmtrain tensor names -> transformers names, splitting the fused q/k/v and gate/up matrices."""
    c = model.config
    sd = model.state_dict()
    q_size, kv_size = c.n_head * c.head_dim_, c.kv_heads * c.head_dim_
    vocab = c.vocab_size  # rows past the vocabulary are padding, never trained: not exported
    out: dict[str, torch.Tensor] = {"model.embed_tokens.weight": sd["embed.weight"][:vocab], "model.norm.weight": sd["norm.weight"]}
    if not c.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"][:vocab]
    for i in range(c.n_layer):
        src, dst = f"blocks.{i}.", f"model.layers.{i}."
        for suffix in ("weight", "bias") if c.qkv_bias else ("weight",):
            q, k, v = sd[f"{src}attn.qkv.{suffix}"].split([q_size, kv_size, kv_size], dim=0)
            out[f"{dst}self_attn.q_proj.{suffix}"] = q
            out[f"{dst}self_attn.k_proj.{suffix}"] = k
            out[f"{dst}self_attn.v_proj.{suffix}"] = v
        out[f"{dst}self_attn.o_proj.weight"] = sd[f"{src}attn.out.weight"]
        if c.qk_norm:
            out[f"{dst}self_attn.q_norm.weight"] = sd[f"{src}attn.q_norm.weight"]
            out[f"{dst}self_attn.k_norm.weight"] = sd[f"{src}attn.k_norm.weight"]
        gate, up = sd[f"{src}mlp.up.weight"].chunk(2, dim=0)
        out[f"{dst}mlp.gate_proj.weight"] = gate
        out[f"{dst}mlp.up_proj.weight"] = up
        out[f"{dst}mlp.down_proj.weight"] = sd[f"{src}mlp.down.weight"]
        out[f"{dst}input_layernorm.weight"] = sd[f"{src}attn_norm.weight"]
        out[f"{dst}post_attention_layernorm.weight"] = sd[f"{src}mlp_norm.weight"]
    return {k: v.detach().contiguous() for k, v in out.items()}


def export_hf(
    model: Transformer,
    out_dir: str | Path,
    tokenizer: HFTokenizerWriter | None = None,
    *,
    bos_id: int | None = None,
    eos_id: int | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write config.json + model.safetensors (+ the tokenizer's files) that AutoModelForCausalLM loads."""
    out = Path(out_dir)
    config = hf_config(model.config, bos_id=bos_id, eos_id=eos_id)
    state = to_hf_state_dict(model)
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
        config.torch_dtype = str(dtype).removeprefix("torch.")
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_hf(out)
    return out


# --------------------------------------------------------------------------------------------------------- import
def read_hf_config(path: str | Path) -> dict[str, Any]:
    config_path = Path(path) / "config.json"
    if not config_path.is_file():
        raise UserError(f"{path} is not a Hugging Face model directory: no config.json")
    try:
        return json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{config_path}: invalid JSON ({e})") from None


def model_config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """ModelConfig from a transformers config.json; ConfigError naming any feature slmtrain does not model."""
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(
            "model_type", f"unsupported architecture {model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    act = hf.get("hidden_act", "silu")
    if act not in SUPPORTED_ACTIVATIONS:
        raise ConfigError("hidden_act", f"unsupported activation {act!r}; supported: {', '.join(SUPPORTED_ACTIVATIONS)}")
    if hf.get("mlp_bias"):
        raise ConfigError("mlp_bias", "MLP biases are not supported")
    attention_bias = bool(hf.get("attention_bias", False))
    if attention_bias and model_type in ("llama", "qwen3"):
        raise ConfigError("attention_bias", "biases on every attention projection (incl. the output) are not supported")
    if model_type == "qwen2" and hf.get("use_sliding_window"):
        raise ConfigError("use_sliding_window", "sliding-window attention is not supported")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    theta = float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ConfigError("rope_scaling", f"unsupported rope scaling {rope_type!r}; supported: {', '.join(SUPPORTED_ROPE_TYPES)}")
    scaling = RopeScaling()
    if rope_type == "linear":
        scaling = RopeScaling(kind="linear", factor=float(rope["factor"]))
    elif rope_type == "llama3":
        scaling = RopeScaling(
            kind="llama3",
            factor=float(rope["factor"]),
            low_freq_factor=float(rope["low_freq_factor"]),
            high_freq_factor=float(rope["high_freq_factor"]),
            original_max_seq_len=int(rope["original_max_position_embeddings"]),
        )
    n_head = int(hf["num_attention_heads"])
    return ModelConfig(
        vocab_size=int(hf["vocab_size"]),
        n_layer=int(hf["num_hidden_layers"]),
        d_model=int(hf["hidden_size"]),
        n_head=n_head,
        n_kv_head=int(hf.get("num_key_value_heads") or n_head),
        head_dim=int(hf.get("head_dim") or hf["hidden_size"] // n_head),
        ffn_hidden=int(hf["intermediate_size"]),
        ffn=SUPPORTED_ACTIVATIONS[act],
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        qk_norm=model_type == "qwen3",
        rope_theta=theta,
        rope_scaling=scaling,
        max_seq_len=int(hf.get("max_position_embeddings", 2048)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),  # transformers' default for all three types
        qkv_bias=model_type == "qwen2",
        init_std=float(hf.get("initializer_range", 0.02)),
    )


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(str(path / shard)))
        return state
    single = path / "model.safetensors"
    if single.is_file():
        return load_file(str(single))
    if any(path.glob("*.bin")) or any(path.glob("*.pt")):
        raise UserError(f"{path}: only safetensors weights are loaded (pickle .bin/.pt files are unsafe to load)")
    raise UserError(f"{path}: no model.safetensors found")


def from_hf_state_dict(config: ModelConfig, hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {"embed.weight": hf_state["model.embed_tokens.weight"], "norm.weight": hf_state["model.norm.weight"]}
    sd["lm_head.weight"] = sd["embed.weight"] if config.tie_embeddings else hf_state["lm_head.weight"]
    for i in range(config.n_layer):
        src, dst = f"model.layers.{i}.", f"blocks.{i}."
        for suffix in ("weight", "bias") if config.qkv_bias else ("weight",):
            sd[f"{dst}attn.qkv.{suffix}"] = torch.cat(
                [hf_state[f"{src}self_attn.{p}_proj.{suffix}"] for p in ("q", "k", "v")], dim=0
            )
        sd[f"{dst}attn.out.weight"] = hf_state[f"{src}self_attn.o_proj.weight"]
        if config.qk_norm:
            sd[f"{dst}attn.q_norm.weight"] = hf_state[f"{src}self_attn.q_norm.weight"]
            sd[f"{dst}attn.k_norm.weight"] = hf_state[f"{src}self_attn.k_norm.weight"]
        sd[f"{dst}mlp.up.weight"] = torch.cat(
            [hf_state[f"{src}mlp.gate_proj.weight"], hf_state[f"{src}mlp.up_proj.weight"]], dim=0
        )
        sd[f"{dst}mlp.down.weight"] = hf_state[f"{src}mlp.down_proj.weight"]
        sd[f"{dst}attn_norm.weight"] = hf_state[f"{src}input_layernorm.weight"]
        sd[f"{dst}mlp_norm.weight"] = hf_state[f"{src}post_attention_layernorm.weight"]
    return sd


def load_hf(path: str | Path, dtype: torch.dtype = torch.float32) -> Transformer:
    """An slmtrain Transformer with the weights of a local transformers directory (safetensors only)."""
    path = Path(path)
    config = model_config_from_hf(read_hf_config(path))
    hf_state = _read_safetensors(path)
    try:
        state = from_hf_state_dict(config, hf_state)
    except KeyError as e:
        raise UserError(f"{path}: weights do not match config.json, missing tensor {e}") from None
    return model_from_state_dict(config, state, dtype)


def model_from_state_dict(config: ModelConfig, state: dict[str, torch.Tensor], dtype: torch.dtype) -> Transformer:
    """A Transformer holding ``state`` (slmtrain names), built without initialising weights first."""
    with torch.device("meta"):
        model = Transformer(config)
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    inv_freq = rope_inverse_frequencies(config.head_dim_, config.rope_theta, config.rope_scaling)
    model.register_buffer("inv_freq", inv_freq, persistent=False)  # buffers are not in the state dict
    return model.eval()
