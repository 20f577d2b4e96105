from __future__ import annotations

import pytest
import torch

from slmtrain.eval.quantize import PackedInt4Linear, quantization_table, quantize_model
from slmtrain.eval.runtime import weight_bytes
from tests.eval.eval_helpers import tiny_model


@pytest.mark.parametrize("scheme,tolerance", [("int8", 0.02), ("int8-dynamic", 0.05), ("int4", 0.2)])
def test_quantized_model_approximates_the_float_model_in_fewer_bytes(scheme, tolerance):
    model = tiny_model(tie_embeddings=False).to(torch.bfloat16)
    quantized, skipped = quantize_model(model, scheme)
    ids = torch.randint(0, 258, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference, approximate = model(ids).float(), quantized(ids).float()
    error = (approximate - reference).norm() / reference.norm()
    assert 0 < error < tolerance and skipped == []
    matrices = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    saved = matrices * (2 - (0.5 if scheme == "int4" else 1))  # bf16 -> int8 or packed int4, before scales
    assert weight_bytes(quantized) < weight_bytes(model) - 0.8 * saved


def test_tied_head_stays_shared_with_the_embedding():
    quantized, _ = quantize_model(tiny_model(), "int8")
    assert quantized.lm_head.weight is quantized.embed.weight
    assert type(quantized.blocks[0].mlp.up.weight).__name__ == "Int8Tensor"  # torchao's tensor subclass


def test_int4_packing_round_trips_each_weight_to_its_level():
    linear = torch.nn.Linear(32, 2, bias=False)
    levels = torch.arange(-8, 8).repeat(4).reshape(2, 32).float()  # every int4 level, group max |-8| -> scale 8/7
    with torch.no_grad():
        linear.weight.copy_(levels * 0.5)
    quantized = PackedInt4Linear(linear, group_size=32)
    scale = 8 * 0.5 / 7
    expected = torch.round(levels * 0.5 / scale).clamp(-8, 7) * scale
    assert torch.allclose(quantized.dequantized_weight(torch.float32), expected, atol=1e-3)
    assert quantized.weight_q.dtype == torch.uint8 and quantized.weight_q.numel() == 32


def test_int4_leaves_layers_whose_width_is_not_a_multiple_of_the_group_in_floating_point():
    model = tiny_model(ffn_hidden=96)  # mlp.down has 96 inputs: not a multiple of 64
    quantized, skipped = quantize_model(model, "int4", group_size=64)
    assert skipped == ["blocks.0.mlp.down", "blocks.1.mlp.down"]
    assert isinstance(quantized.blocks[0].mlp.down, torch.nn.Linear)
    assert isinstance(quantized.blocks[0].mlp.up, PackedInt4Linear)


def test_quantization_table_reports_perplexity_change(model, tokenizer):
    texts = ["for x in range(10):\n    print(x)", "while True:\n    break"]
    rows = quantization_table(model, tokenizer, texts, schemes=("int8", "int4"))
    assert [r["scheme"] for r in rows] == ["none (float32)", "int8", "int4"]
    for row in rows[1:]:
        assert row["perplexity_change"] == pytest.approx(row["perplexity"] / rows[0]["perplexity"] - 1)
        assert abs(row["perplexity_change"]) < 0.05 and row["weight_bytes"] < rows[0]["weight_bytes"]
