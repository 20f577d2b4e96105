"""The fine-tuning methods' model surgery: peft LoRA / DoRA adapters on slmtrain's Transformer, QLoRA's 4-bit base,
and the adapter written in PEFT's format under transformers' module names.

slmtrain fuses q/k/v into ``attn.qkv`` and gate/up into ``mlp.up``; transformers keeps them apart. A LoRA on a
fused layer is exactly a LoRA on each part: every part shares the down-projection ``lora_A`` and takes its rows of
``lora_B`` (and, for DoRA, of the per-row magnitude vector, since DoRA's weight norm is taken per output row). So
the saved adapter loads with ``peft.PeftModel.from_pretrained`` over the Hugging Face export of the base model and
computes the same function.

QLoRA's frozen base is torchao's NF4 (Dettmers et al. 2023: 4-bit NormalFloat, blocks of 64 weights with
double-quantised int8 scales), which runs on CPU; peft's own QLoRA path needs bitsandbytes and a GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from safetensors.torch import save_file
from torch import nn

from slmtrain.config import ConfigError, require
from slmtrain.model.config import ModelConfig
from slmtrain.model.transformer import Transformer

METHODS = ("full", "lora", "dora", "qlora", "mezo", "mezo_lora")
ADAPTER_METHODS = ("lora", "dora", "qlora", "mezo_lora")
# slmtrain's linear layers of a block -> (their parent in transformers, the transformers layers they fuse)
HF_LINEARS: dict[str, tuple[str, tuple[str, ...]]] = {
    "qkv": ("self_attn", ("q_proj", "k_proj", "v_proj")),
    "out": ("self_attn", ("o_proj",)),
    "up": ("mlp", ("gate_proj", "up_proj")),
    "down": ("mlp", ("down_proj",)),
}
NF4_BLOCK = 64  # weights per NF4 scale (QLoRA's block size)
NF4_SCALER_BLOCK = 256  # scales per double-quantisation block (QLoRA's), reduced where a layer is too small


@dataclass
class LoraOptions:
    rank: int = 8  # r, the adapters' inner dimension
    alpha: float = 16.0  # adapter updates are scaled by alpha / rank
    dropout: float = 0.0  # dropout on the adapters' input while training
    target_modules: list[str] = field(default_factory=lambda: ["qkv", "out", "up", "down"])  # attention: qkv, out; MLP: up (gate and up), down

    def __post_init__(self) -> None:
        require(self.rank > 0, "rank", f"must be positive, got {self.rank}")
        require(self.alpha > 0, "alpha", f"must be positive, got {self.alpha}")
        require(0 <= self.dropout < 1, "dropout", f"must be in [0, 1), got {self.dropout}")
        require(len(self.target_modules) > 0, "target_modules", f"name at least one of {', '.join(HF_LINEARS)}")
        for name in self.target_modules:
            require(name in HF_LINEARS, "target_modules",
                    f"no layer named {name!r} in slmtrain's blocks; valid choices: {', '.join(HF_LINEARS)}")


def block_linear_shapes(config: ModelConfig) -> dict[str, tuple[int, int]]:
    """(in, out) of each fused linear layer of one block."""
    d, q, kv = config.d_model, config.n_head * config.head_dim_, config.kv_heads * config.head_dim_
    up = (2 if config.gated_ffn else 1) * config.ffn_dim
    return {"qkv": (d, q + 2 * kv), "out": (q, d), "up": (d, up), "down": (config.ffn_dim, d)}


def check_rank(config: ModelConfig, options: LoraOptions) -> None:
    """A rank above a targeted layer's smallest dimension adds parameters and no expressive power: refused."""
    for name, (inputs, outputs) in block_linear_shapes(config).items():
        if name in options.target_modules and options.rank > min(inputs, outputs):
            raise ConfigError("lora.rank", f"rank {options.rank} exceeds the smallest dimension "
                                           f"({min(inputs, outputs)}) of {name} ({inputs} -> {outputs})")


def lora_config(options: LoraOptions, dora: bool, target_modules: list[str], task_type: str | None = None,
                base: str | None = None):
    """peft's LoraConfig. slmtrain's Transformer is wrapped without a task type (peft's causal-LM wrapper calls
    transformers' generation API); the saved config names CAUSAL_LM, for transformers' models."""
    from peft import LoraConfig

    return LoraConfig(r=options.rank, lora_alpha=options.alpha, lora_dropout=options.dropout,
                      target_modules=target_modules, use_dora=dora, task_type=task_type,
                      base_model_name_or_path=base)


def add_adapters(model: Transformer, options: LoraOptions, dora: bool = False):
    """The model wrapped by peft with LoRA (or DoRA) on the targeted layers; only the adapters train."""
    from peft import get_peft_model

    check_rank(model.config, options)
    return get_peft_model(model, lora_config(options, dora, list(options.target_modules)))


# ------------------------------------------------------------------------------------------------------ QLoRA
def quantize_frozen_base(model: nn.Module) -> list[str]:
    """Every linear weight of the blocks becomes a frozen NF4 tensor (the adapters stay fp32). Returns the layers
    left in floating point because their size is not a multiple of the NF4 block."""
    from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import to_nf4

    kept = []
    for name, module in model.named_modules():
        if not (isinstance(module, nn.Linear) and ".blocks." in f".{name}" and "lora_" not in name):
            continue
        weight = module.weight.detach()
        if weight.numel() % NF4_BLOCK:
            kept.append(name)
            continue
        scaler_block = math.gcd(NF4_SCALER_BLOCK, weight.numel() // NF4_BLOCK)
        module.weight = nn.Parameter(to_nf4(weight, NF4_BLOCK, scaler_block), requires_grad=False)
    return kept


def stored_bytes(tensor: torch.Tensor) -> int:
    """Bytes a tensor really holds: for a tensor subclass (NF4), the sum of its inner tensors."""
    if hasattr(tensor, "__tensor_flatten__"):
        names, _ = tensor.__tensor_flatten__()
        return sum(stored_bytes(getattr(tensor, n)) for n in names)
    return tensor.numel() * tensor.element_size()


def dequantize_base(model: nn.Module) -> None:
    """NF4 weights back to fp32 parameters (what a merged model is built from)."""
    for module in model.modules():
        if isinstance(module, nn.Linear) and hasattr(module.weight, "get_original_weight"):
            module.weight = nn.Parameter(module.weight.get_original_weight().float(), requires_grad=False)


# ------------------------------------------------------------------------------------------- PEFT adapter files
def hf_adapter_state(peft_model, config) -> dict[str, torch.Tensor]:
    """The adapter's tensors under transformers' names, fused layers split (see the module docstring)."""
    from peft import get_peft_model_state_dict

    q, kv = config.n_head * config.head_dim_, config.kv_heads * config.head_dim_
    rows = {"qkv": [q, kv, kv], "out": None, "up": [config.ffn_dim, config.ffn_dim], "down": None}
    out = {}
    for key, tensor in get_peft_model_state_dict(peft_model).items():
        # base_model.model.blocks.{i}.{attn|mlp}.{layer}.{lora_A.weight|lora_B.weight|lora_magnitude_vector}
        _, _, _, index, _, layer, *rest = key.split(".")
        parent, hf_layers = HF_LINEARS[layer]
        split_rows = rest[0] != "lora_A" and rows[layer] is not None
        parts = tensor.split(rows[layer], dim=0) if split_rows else [tensor] * len(hf_layers)
        for hf_layer, part in zip(hf_layers, parts):
            name = ".".join(["base_model.model.model.layers", index, parent, hf_layer, *rest])
            out[name] = part.detach().float().contiguous().clone()
    return out


def save_hf_adapter(peft_model, config, options: LoraOptions, dora: bool, out_dir, base: str | None) -> None:
    """adapter_config.json + adapter_model.safetensors, as ``PeftModel.save_pretrained`` writes them for
    transformers' Llama / Qwen2 / Qwen3 models."""
    hf_targets = [hf for name in options.target_modules for hf in HF_LINEARS[name][1]]
    lora_config(options, dora, hf_targets, "CAUSAL_LM", base).save_pretrained(str(out_dir))
    save_file(hf_adapter_state(peft_model, config), str(out_dir / "adapter_model.safetensors"),
              metadata={"format": "pt"})
