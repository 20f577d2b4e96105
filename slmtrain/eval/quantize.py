"""Post-training quantisation of the linear layers, and what it costs in perplexity.

Three schemes, all on the transformer blocks' linear layers (and an untied output head; a head tied to the
embedding stays shared and unquantised, as does the embedding table, which is a lookup, not a matmul):

- ``int8``: weight-only, symmetric per output channel, through torchao (``Int8WeightOnlyConfig``).
- ``int8-dynamic``: the same int8 weights with activations quantised per token at run time, int8 x int8 matmuls,
  through torchao (``Int8DynamicActivationInt8WeightConfig``).
- ``int4``: weight-only, symmetric per group of ``group_size`` input channels, two weights packed per byte, by the
  small module below; layers whose width is not a multiple of the group stay in floating point and are listed.

Why int4 is hand-written: torchao 0.18's packed int4 layouts need CUDA or the ``mslk`` package; on a CPU its only
int4 (``IntxWeightOnlyConfig(weight_dtype=torch.int4)``) keeps one value per byte, as many weight bytes as int8,
which defeats int4's purpose (memory and bytes read per token). Measured on this project's CPU (one thread, a
1024 -> 2816 bf16 layer, one token, loaded machine): torchao int4 4.6-9.0 ms against 9.9 ms here, at 2x the bytes;
for int8 torchao won (2.5 ms against 4.9 ms for the former hand-written module, bf16 itself 1.0-1.2 ms), so int8
is torchao's.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slmtrain.config import check_choice
from slmtrain.eval import TextTokenizer
from slmtrain.eval.perplexity import perplexity_of_texts
from slmtrain.eval.runtime import weight_bytes
from slmtrain.model.transformer import Transformer

SCHEMES = ("int8", "int8-dynamic", "int4")
SCALE_DTYPE = torch.float16
INT4_LEVELS = 7  # symmetric: -8..7 stored, scales put the group's largest magnitude at 7


class PackedInt4Linear(nn.Module):
    """Weight-only int4: per-group scales, two weights per byte, dequantised to the activations' dtype per call."""

    def __init__(self, linear: nn.Linear, group_size: int = 32):
        super().__init__()
        self.in_features, self.out_features, self.group_size = linear.in_features, linear.out_features, group_size
        groups = linear.weight.detach().float().reshape(self.out_features, -1, group_size)  # (out, groups, size)
        scales = (groups.abs().amax(-1, keepdim=True) / INT4_LEVELS).clamp_min(1e-12)
        levels = torch.round(groups / scales).clamp(-INT4_LEVELS - 1, INT4_LEVELS).to(torch.int8)
        unsigned = (levels.reshape(self.out_features, self.in_features) + 8).to(torch.uint8)  # 0..15
        self.register_buffer("weight_q", (unsigned[:, 0::2] | (unsigned[:, 1::2] << 4)).contiguous())
        self.register_buffer("scales", scales.squeeze(-1).to(SCALE_DTYPE))  # (out, groups)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        low = (self.weight_q & 0x0F).to(torch.int8) - 8
        high = (self.weight_q >> 4).to(torch.int8) - 8
        values = torch.stack((low, high), dim=-1).reshape(self.out_features, -1, self.group_size).to(dtype)
        return (values * self.scales.to(dtype)[..., None]).reshape(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized_weight(x.dtype), self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, group_size={self.group_size}"


def _torchao_config(scheme: str) -> Any:
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig

    return Int8WeightOnlyConfig() if scheme == "int8" else Int8DynamicActivationInt8WeightConfig()


def quantize_model(model: Transformer, scheme: str, group_size: int = 32) -> tuple[Transformer, list[str]]:
    """A quantised copy of ``model`` and the names of the linear layers left in floating point."""
    check_choice("quant", scheme, SCHEMES)
    quantized = copy.deepcopy(model).eval()

    def quantizable(module: nn.Module, name: str) -> bool:
        return isinstance(module, nn.Linear) and not (name == "lm_head" and model.config.tie_embeddings)

    if scheme != "int4":
        from torchao.quantization import quantize_

        quantize_(quantized, _torchao_config(scheme), filter_fn=quantizable)
        return quantized, []
    skipped = []
    for name, module in list(quantized.named_modules()):
        if not quantizable(module, name):
            continue
        if module.in_features % group_size or group_size % 2:
            skipped.append(name)
            continue
        parent, _, child = name.rpartition(".")
        setattr(quantized.get_submodule(parent) if parent else quantized, child, PackedInt4Linear(module, group_size))
    return quantized, skipped


def quantization_table(model: Transformer, tokenizer: TextTokenizer, texts: Sequence[str],
                       schemes: Sequence[str] = SCHEMES, group_size: int = 32,
                       window: int | None = None) -> list[dict[str, Any]]:
    """Weight bytes and perplexity of the model as given and of each scheme, with the change against it."""
    baseline = perplexity_of_texts(model, tokenizer, texts, window)
    rows = [{"scheme": f"none ({str(model.embed.weight.dtype).removeprefix('torch.')})",
             "weight_bytes": weight_bytes(model), **baseline.as_dict(), "perplexity_change": 0.0, "skipped_layers": 0}]
    for scheme in schemes:
        quantized, skipped = quantize_model(model, scheme, group_size)
        result = perplexity_of_texts(quantized, tokenizer, texts, window)
        rows.append({"scheme": scheme, "weight_bytes": weight_bytes(quantized), **result.as_dict(),
                     "perplexity_change": result.perplexity / baseline.perplexity - 1, "skipped_layers": len(skipped)})
    return rows
