"""Post-training quantisation of the linear layers, and what it costs in perplexity.

Three schemes, all on the transformer blocks' linear layers (and an untied output head; a head tied to the
embedding stays shared and unquantised, as does the embedding table, which is a lookup, not a matmul):

- ``int8``: weight-only, symmetric per output channel; weights dequantised on the fly (4x smaller than fp32).
- ``int8-dynamic``: the same int8 weights, activations quantised per token at run time, int8 x int8 -> int32
  matmuls (``torch._int_mm``), where the CPU/torch build supports them.
- ``int4``: weight-only, symmetric per group of ``group_size`` input channels, two weights packed per byte;
  layers whose width is not a multiple of the group stay in floating point and are listed.

torch.ao's dynamic quantisation is deprecated for removal, so these are small explicit modules instead.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slmtrain.config import UserError, check_choice
from slmtrain.eval import TextTokenizer
from slmtrain.eval.perplexity import perplexity_of_texts
from slmtrain.eval.runtime import weight_bytes
from slmtrain.model.transformer import Transformer

SCHEMES = ("int8", "int8-dynamic", "int4")
SCALE_DTYPE = torch.float16


class QuantizedLinear(nn.Module):
    def __init__(self, linear: nn.Linear, scheme: str, group_size: int = 32):
        super().__init__()
        check_choice("quant", scheme, SCHEMES)
        self.scheme, self.in_features, self.out_features = scheme, linear.in_features, linear.out_features
        weight = linear.weight.detach().float()
        self.group_size = group_size if scheme == "int4" else self.in_features
        groups = weight.reshape(self.out_features, -1, self.group_size)  # (out, groups, group_size)
        levels = 7 if scheme == "int4" else 127
        scales = (groups.abs().amax(-1, keepdim=True) / levels).clamp_min(1e-12)
        quantized = torch.round(groups / scales).clamp(-levels - (scheme == "int4"), levels).to(torch.int8)
        quantized = quantized.reshape(self.out_features, self.in_features)
        if scheme == "int4":  # offset to 0..15 and pack pairs of columns into one byte
            unsigned = (quantized + 8).to(torch.uint8)
            quantized = unsigned[:, 0::2] | (unsigned[:, 1::2] << 4)
        self.register_buffer("weight_q", quantized.contiguous())
        self.register_buffer("scales", scales.squeeze(-1).to(SCALE_DTYPE))  # (out, groups)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        if self.scheme == "int4":
            low = (self.weight_q & 0x0F).to(torch.int8) - 8
            high = (self.weight_q >> 4).to(torch.int8) - 8
            values = torch.stack((low, high), dim=-1).reshape(self.out_features, self.in_features)
        else:
            values = self.weight_q
        groups = values.reshape(self.out_features, -1, self.group_size).to(dtype)
        return (groups * self.scales.to(dtype)[..., None]).reshape(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scheme != "int8-dynamic":
            return F.linear(x, self.dequantized_weight(x.dtype), self.bias)
        rows = x.reshape(-1, self.in_features).float()
        row_scales = (rows.abs().amax(-1, keepdim=True) / 127).clamp_min(1e-12)
        rows_q = torch.round(rows / row_scales).clamp(-127, 127).to(torch.int8)
        y = torch._int_mm(rows_q, self.weight_q.t()).float() * row_scales * self.scales.float().T
        if self.bias is not None:
            y = y + self.bias.float()
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, scheme={self.scheme}, group_size={self.group_size}"


def check_supported(scheme: str) -> None:
    """UserError when this torch build/CPU cannot run the scheme (int8 x int8 matmuls are not everywhere)."""
    check_choice("quant", scheme, SCHEMES)
    if scheme == "int8-dynamic":
        try:
            torch._int_mm(torch.ones(17, 32, dtype=torch.int8), torch.ones(32, 32, dtype=torch.int8))
        except (RuntimeError, AttributeError) as e:
            raise UserError(f"int8-dynamic is not supported by this torch build/CPU: {e}") from None


def quantize_model(model: Transformer, scheme: str, group_size: int = 32) -> tuple[Transformer, list[str]]:
    """A quantised copy of ``model`` and the names of the linear layers left in floating point."""
    check_supported(scheme)
    quantized = copy.deepcopy(model).eval()
    skipped = []
    for name, module in list(quantized.named_modules()):
        if not isinstance(module, nn.Linear):
            continue
        if name == "lm_head" and model.config.tie_embeddings:
            continue
        if scheme == "int4" and (module.in_features % group_size or module.in_features % 2):
            skipped.append(name)
            continue
        parent, _, child = name.rpartition(".")
        setattr(quantized.get_submodule(parent) if parent else quantized, child,
                QuantizedLinear(module, scheme, group_size))
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
