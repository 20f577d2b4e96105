"""Hugging Face interop: export to a directory transformers loads (config.json + model.safetensors), and import
Llama / Qwen2 / Qwen3 directories (SmolLM, TinyLlama, MobileLLM-as-Llama...) and the Mixture-of-Experts Mixtral /
OLMoE / Qwen2-MoE directories saved by transformers.

Architecture choice on export: dense models are Llama, Qwen2 with q/k/v biases, Qwen3 with QK-norm. MoE models are
Mixtral (softmax, top-k renormalised), OLMoE with QK-norm over the projections, Qwen2-MoE with a gated shared
expert (and optional dense first layers); what none of them can represent (sigmoid routing, a loss-free routing
bias...) is an error naming it. Experts are written one tensor per expert, the layout transformers saves and the
released checkpoints use. Only safetensors are read (no pickles) and no remote code ever runs. Tensor names come
from one table (:func:`hf_table`) that export and import both walk.
"""

from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Callable
from typing import Any, Protocol

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from slmtrain.config import ConfigError, UserError
from slmtrain.model.config import ModelConfig, MoEConfig, RopeScaling
from slmtrain.model.formats.mapping import (HALVES, Layers, Row, export_tensors, first_rows, import_expert,
                                            import_tensors, row, split)
from slmtrain.model.transformer import Transformer, rope_inverse_frequencies

MOE_MODEL_TYPES = ("mixtral", "olmoe", "qwen2_moe")
SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", *MOE_MODEL_TYPES)
# model_type -> (transformers config class, model class)
HF_CLASSES = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
              "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"), "mixtral": ("MixtralConfig", "MixtralForCausalLM"),
              "olmoe": ("OlmoeConfig", "OlmoeForCausalLM"), "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM")}
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
    model_type = "qwen3" if config.qk_norm else "qwen2" if config.qkv_bias else "llama"
    if config.moe is not None:
        model_type = _moe_architecture(config, unsupported)
    elif config.qk_norm and config.qk_norm_scope != "head":
        unsupported.append(f"qk_norm_scope={config.qk_norm_scope} in a dense model (Qwen3 normalises per head)")
    if unsupported:
        raise ConfigError("model", "no Hugging Face architecture for " + ", ".join(unsupported))
    return model_type


def _moe_architecture(config: ModelConfig, unsupported: list[str]) -> str:
    """Mixtral, OLMoE or Qwen2-MoE, appending to ``unsupported`` what the chosen one cannot represent."""
    moe = config.moe
    assert moe is not None
    if moe.score != "softmax":
        unsupported.append(f"moe.score={moe.score} (Mixtral, OLMoE and Qwen2-MoE route by softmax)")
    if moe.loss_free_bias:
        unsupported.append("moe.loss_free_bias (a routing bias that Mixtral, OLMoE and Qwen2-MoE do not have)")
    if moe.shared_experts:
        if not moe.shared_gate:
            unsupported.append("shared experts without moe.shared_gate (Qwen2-MoE gates its shared expert)")
        if config.qk_norm:
            unsupported.append("qk_norm together with shared experts (Qwen2-MoE has no QK-norm)")
        return "qwen2_moe"
    if moe.dense_layers:
        unsupported.append("moe.dense_layers without shared experts (only Qwen2-MoE has dense layers)")
    if config.qk_norm:
        if config.qk_norm_scope != "projection":
            unsupported.append("qk_norm_scope=head in an MoE model (OLMoE normalises the whole projection)")
        if config.head_dim_ * config.n_head != config.d_model:
            unsupported.append("an explicit head_dim with OLMoE's QK-norm (it needs n_head * head_dim = d_model)")
        return "olmoe"
    if config.qkv_bias:
        unsupported.append("qkv_bias without shared experts (only Qwen2-MoE has q/k/v biases)")
    if not moe.renormalize:
        unsupported.append("moe.renormalize=false without QK-norm or shared experts (Mixtral renormalises)")
    return "mixtral"


def hf_config(config: ModelConfig, bos_id: int | None = None, eos_id: int | None = None):
    """A transformers config object of the installed version (its own defaults and key names)."""
    import transformers

    model_type = hf_architecture(config)
    config_class, model_class = HF_CLASSES[model_type]
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
    if model_type in ("qwen3", "olmoe"):
        kwargs.update(attention_bias=False)
    if config.moe is not None:
        kwargs.update(_hf_moe_kwargs(config, model_type))
    hf = getattr(transformers, config_class)(**kwargs)
    hf.architectures = [model_class]
    return hf


def _hf_moe_kwargs(config: ModelConfig, model_type: str) -> dict[str, Any]:
    moe = config.moe
    assert moe is not None
    kwargs: dict[str, Any] = dict(num_experts_per_tok=moe.top_k, router_aux_loss_coef=moe.aux_loss_coef)
    if model_type == "mixtral":
        return {**kwargs, "num_local_experts": moe.experts, "intermediate_size": config.expert_ffn_dim,
                "router_jitter_noise": 0.0, "sliding_window": None}
    kwargs.update(num_experts=moe.experts, norm_topk_prob=moe.renormalize)
    if model_type == "olmoe":
        return {**kwargs, "intermediate_size": config.expert_ffn_dim, "clip_qkv": None}
    return {**kwargs, "moe_intermediate_size": config.expert_ffn_dim, "intermediate_size": config.ffn_dim,
            "shared_expert_intermediate_size": config.shared_ffn_dim, "decoder_sparse_step": 1,
            "mlp_only_layers": list(range(moe.dense_layers)), "qkv_bias": config.qkv_bias,
            "use_sliding_window": False}


def hf_table(config: ModelConfig) -> list[Row]:
    """slmtrain name <-> transformers names: fused q/k/v and gate/up split, experts one tensor per expert (the layout
    transformers saves and released checkpoints use), Mixtral's w1/w3/w2 under block_sparse_moe."""
    model_type = hf_architecture(config)
    q, kv, vocab = config.n_head * config.head_dim_, config.kv_heads * config.head_dim_, config.vocab_size
    layer, attn, mlp = "model.layers.{i}.", "model.layers.{i}.self_attn.", "model.layers.{i}.mlp."
    table = [
        row("embed.weight", "model.embed_tokens.weight", transform=first_rows(vocab)),
        row("norm.weight", "model.norm.weight"),
        *(row(f"blocks.{{i}}.attn.qkv.{kind}", f"{attn}q_proj.{kind}", f"{attn}k_proj.{kind}",
              f"{attn}v_proj.{kind}", transform=split(q, kv, kv))
          for kind in (("weight", "bias") if config.qkv_bias else ("weight",))),
        row("blocks.{i}.attn.out.weight", attn + "o_proj.weight"),
        row("blocks.{i}.attn_norm.weight", layer + "input_layernorm.weight"),
        row("blocks.{i}.mlp_norm.weight", layer + "post_attention_layernorm.weight"),
        *_gated_mlp("blocks.{i}.mlp.", mlp, layers="dense"),
    ]
    if not config.tie_embeddings:  # tied: transformers ties lm_head to embed_tokens itself
        table.append(row("lm_head.weight", "lm_head.weight", transform=first_rows(vocab)))
    if config.qk_norm:
        table += [row("blocks.{i}.attn.q_norm.weight", attn + "q_norm.weight"),
                  row("blocks.{i}.attn.k_norm.weight", attn + "k_norm.weight")]
    if config.moe is None:
        return table
    moe = layer + ("block_sparse_moe." if model_type == "mixtral" else "mlp.")
    gate, up, down = ("w1", "w3", "w2") if model_type == "mixtral" else ("gate_proj", "up_proj", "down_proj")
    table += [
        row("blocks.{i}.mlp.router.weight", moe + "gate.weight", layers="moe"),
        row("blocks.{i}.mlp.experts.up", f"{moe}experts.{{e}}.{gate}.weight", f"{moe}experts.{{e}}.{up}.weight",
            transform=HALVES, layers="moe"),
        row("blocks.{i}.mlp.experts.down", f"{moe}experts.{{e}}.{down}.weight", layers="moe"),
    ]
    if config.moe.shared_experts:  # Qwen2-MoE: all of them one wider FFN, gated
        table += [*_gated_mlp("blocks.{i}.mlp.shared.", moe + "shared_expert.", layers="moe"),
                  row("blocks.{i}.mlp.shared_gate.weight", moe + "shared_expert_gate.weight", layers="moe")]
    return table


def _gated_mlp(ours: str, theirs: str, layers: Layers) -> list[Row]:
    """A SwiGLU/GeGLU FFN (dense, or the shared experts): slmtrain fuses gate and up into one matrix."""
    return [row(ours + "up.weight", theirs + "gate_proj.weight", theirs + "up_proj.weight", transform=HALVES,
                layers=layers),
            row(ours + "down.weight", theirs + "down_proj.weight", layers=layers)]


def is_hf_expert_tensor(name: str) -> bool:
    return ".experts." in name


def to_hf_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """transformers' names and tensors for the model's weights."""
    state = export_tensors(hf_table(model.config), model.config, model.state_dict())
    return {k: v.detach().contiguous() for k, v in state.items()}


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
    if attention_bias and model_type in ("llama", "qwen3", "olmoe"):
        raise ConfigError("attention_bias", "biases on every attention projection (incl. the output) are not supported")
    if model_type in ("qwen2", "qwen2_moe") and hf.get("use_sliding_window"):
        raise ConfigError("use_sliding_window", "sliding-window attention is not supported")
    if model_type == "mixtral" and hf.get("sliding_window") is not None:
        raise ConfigError("sliding_window", "sliding-window attention is not supported")
    if model_type == "olmoe" and hf.get("clip_qkv") is not None:
        raise ConfigError("clip_qkv", "clipping of q/k/v activations is not supported")
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
    try:
        moe = _moe_config_from_hf(hf) if model_type in MOE_MODEL_TYPES else None
    except ConfigError as e:  # an invalid MoEConfig: name the key under moe
        raise (e if e.key in hf else e.under("moe")) from None
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
        qk_norm=model_type in ("qwen3", "olmoe"),
        qk_norm_scope="projection" if model_type == "olmoe" else "head",
        rope_theta=theta,
        rope_scaling=scaling,
        max_seq_len=int(hf.get("max_position_embeddings", 2048)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),  # transformers' default for all three types
        qkv_bias=model_type == "qwen2" or (model_type == "qwen2_moe" and bool(hf.get("qkv_bias", True))),
        init_std=float(hf.get("initializer_range", 0.02)),
        moe=moe,
    )


def _moe_config_from_hf(hf: dict[str, Any]) -> MoEConfig:
    """The MoE half of a Mixtral / OLMoE / Qwen2-MoE config.json; ConfigError naming what slmtrain cannot route."""
    model_type = hf["model_type"]
    if float(hf.get("router_jitter_noise") or 0.0) != 0.0:
        raise ConfigError("router_jitter_noise", f"router jitter noise ({hf['router_jitter_noise']}) is not supported")
    aux_loss_coef = float(hf.get("router_aux_loss_coef", 0.001))
    if model_type == "mixtral":
        return MoEConfig(experts=int(hf.get("num_local_experts", 8)), top_k=int(hf.get("num_experts_per_tok", 2)),
                         aux_loss_coef=aux_loss_coef)
    experts, top_k = int(hf.get("num_experts", 0)), int(hf.get("num_experts_per_tok", 0))
    if experts == 0:
        raise ConfigError("num_experts", "0 experts: a dense model saved as MoE is not supported")
    if model_type == "olmoe":
        return MoEConfig(experts=experts, top_k=top_k, renormalize=bool(hf.get("norm_topk_prob", False)),
                         aux_loss_coef=aux_loss_coef)
    if int(hf.get("decoder_sparse_step", 1)) != 1:
        raise ConfigError("decoder_sparse_step", f"MoE every {hf['decoder_sparse_step']} layers is not supported "
                                                 "(only dense first layers: mlp_only_layers=[0, ..., k-1])")
    dense = sorted(int(i) for i in hf.get("mlp_only_layers") or [])
    if dense != list(range(len(dense))):
        raise ConfigError("mlp_only_layers", f"dense layers {dense} are not the first k layers; not supported")
    shared_width = int(hf.get("shared_expert_intermediate_size", 0))
    if shared_width == 0:
        raise ConfigError("shared_expert_intermediate_size", "0: a Qwen2-MoE without its shared expert is not supported")
    return MoEConfig(experts=experts, top_k=top_k, expert_ffn_hidden=int(hf["moe_intermediate_size"]),
                     shared_experts=1, shared_ffn_hidden=shared_width, shared_gate=True, dense_layers=len(dense),
                     renormalize=bool(hf.get("norm_topk_prob", False)), aux_loss_coef=aux_loss_coef)


def safetensors_files(path: Path) -> list[Path]:
    """The directory's weight files: the shards its index names, or its single model.safetensors."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return [path / shard for shard in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    if any(path.glob("*.bin")) or any(path.glob("*.pt")):
        raise UserError(f"{path}: only safetensors weights are loaded (pickle .bin/.pt files are unsafe to load)")
    raise UserError(f"{path}: no model.safetensors found")


def _read_safetensors(path: Path, keep: Callable[[str], bool]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for file in safetensors_files(path):
        try:
            with safe_open(str(file), framework="pt") as f:
                state.update({name: f.get_tensor(name) for name in f.keys() if keep(name)})
        except (SafetensorError, OSError) as e:  # a truncated, empty or foreign file
            raise UserError(f"{file}: not a readable safetensors file ({e})") from None
    return state


def read_hf_expert(get: Callable[[str], torch.Tensor], table: list[Row], layer: int,
                   expert: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One expert in slmtrain's layout, (gate rows then up rows, down), from a tensor getter (a dict's or a
    memory-mapped file's) through ``table``'s (:func:`hf_table`) per-expert rows."""
    rows = {r.ours: r for r in table}
    return (import_expert(rows["blocks.{i}.mlp.experts.up"], get, layer, expert),
            import_expert(rows["blocks.{i}.mlp.experts.down"], get, layer, expert))


def load_hf(path: str | Path, dtype: torch.dtype = torch.float32, *, experts: bool = True) -> Transformer:
    """An slmtrain Transformer with the weights of a local transformers directory (safetensors only).
    ``experts=False`` does not read the routed experts of an MoE model: they stay on the meta device, for
    :mod:`slmtrain.model.offload` to serve from the files on demand."""
    path = Path(path)
    try:
        config = model_config_from_hf(read_hf_config(path))
    except ConfigError:
        raise
    except (KeyError, ValueError, TypeError) as e:  # a field missing, or of the wrong type
        raise UserError(f"{path / 'config.json'}: not a usable transformers config ({type(e).__name__}: {e})") from None
    hf_state = _read_safetensors(path, keep=lambda name: experts or not is_hf_expert_tensor(name))
    try:
        state = import_tensors(hf_table(config), config, hf_state.__getitem__, experts=experts)
    except KeyError as e:
        raise UserError(f"{path}: weights do not match config.json, missing tensor {e}") from None
    return model_from_state_dict(config, state, dtype, experts=experts)


def model_from_state_dict(config: ModelConfig, state: dict[str, torch.Tensor], dtype: torch.dtype,
                          experts: bool = True) -> Transformer:
    """A Transformer holding ``state`` (slmtrain names), built without initialising weights first; with
    ``experts=False`` the routed experts may be absent (left on the meta device)."""
    with torch.device("meta"):
        model = Transformer(config)
    left_out = model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=experts, assign=True)
    if not experts:  # exactly the experts, nothing else
        assert not left_out.unexpected_keys and all(k.endswith((".experts.up", ".experts.down"))
                                                    for k in left_out.missing_keys), left_out
    if config.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    inv_freq = rope_inverse_frequencies(config.head_dim_, config.rope_theta, config.rope_scaling)
    model.register_buffer("inv_freq", inv_freq, persistent=False)  # buffers are not in the state dict
    return model.eval()
