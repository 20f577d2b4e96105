"""Mixture-of-Experts model: the grouped dropless experts compute what a plain per-token reference computes, the
accounting counts total vs active parameters exactly (checked against instantiated models, torch's FLOP counter,
transformers' own models of the published configs), balancing does what it says, bad configs name their key."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from slmtrain.config import ConfigError, build
from slmtrain.eval.runtime import predicted_decode_tokens_per_s, weight_bytes_read_per_token
from slmtrain.hardware import get_device
from slmtrain.model import presets
from slmtrain.model.config import ModelConfig
from slmtrain.model.formats.hf import model_config_from_hf
from slmtrain.model.moe import MoE
from slmtrain.model.transformer import Transformer
from slmtrain.scaling.devices import Deployment
from tests.model.test_presets import PUBLISHED_PARAMS
from tests.output import diagnostics

REPO = Path(__file__).resolve().parents[2]
SMALL: dict[str, Any] = dict(vocab_size=300, n_layer=3, d_model=48, n_head=4, n_kv_head=2, ffn_hidden=80,
                             max_seq_len=64)
VARIANTS: dict[str, dict[str, Any]] = {
    "top2_of_4": dict(moe=dict(experts=4, top_k=2)),
    "top1_expert_width": dict(moe=dict(experts=5, top_k=1, expert_ffn_hidden=24)),
    "shared_gated_dense_first": dict(moe=dict(experts=4, top_k=2, shared_experts=2, shared_ffn_hidden=16,
                                              shared_gate=True, dense_layers=1, renormalize=False)),
    "sigmoid_loss_free": dict(moe=dict(experts=6, top_k=3, score="sigmoid", loss_free_bias=True)),
    "plain_gelu_experts": dict(ffn="gelu", moe=dict(experts=4, top_k=2)),
    "olmoe_qk_norm": dict(qk_norm=True, qk_norm_scope="projection", moe=dict(experts=4, top_k=2)),
}

# Active parameters as the model cards state them (OLMoE: 1.3B "active", 1.28B exactly; Qwen1.5-MoE: "A2.7B";
# Mixtral: 12.9B active), to 0.1B, and the exact value these shapes give.
PUBLISHED_ACTIVE = {"olmoe-1b-7b": (1.28e9, 1_282_017_280), "qwen1.5-moe-a2.7b": (2.7e9, 2_689_173_504),
                    "mixtral-8x7b": (12.9e9, 12_879_925_248)}
# The shape-defining values of the published config.json files (allenai/OLMoE-1B-7B-0924, Qwen/Qwen1.5-MoE-A2.7B,
# mistralai/Mixtral-8x7B-v0.1).
PUBLISHED_CONFIGS: dict[str, tuple[type, dict[str, Any]]] = {
    "olmoe-1b-7b": (transformers.OlmoeConfig, dict(
        hidden_size=2048, intermediate_size=1024, num_hidden_layers=16, num_attention_heads=16,
        num_key_value_heads=16, vocab_size=50304, num_experts=64, num_experts_per_tok=8, norm_topk_prob=False,
        max_position_embeddings=4096, rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
        clip_qkv=None, router_aux_loss_coef=0.01)),
    "qwen1.5-moe-a2.7b": (transformers.Qwen2MoeConfig, dict(
        hidden_size=2048, intermediate_size=5632, moe_intermediate_size=1408, shared_expert_intermediate_size=5632,
        num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=16, vocab_size=151936, num_experts=60,
        num_experts_per_tok=4, norm_topk_prob=False, decoder_sparse_step=1, max_position_embeddings=8192,
        rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False, use_sliding_window=False,
        router_aux_loss_coef=0.001)),
    "mixtral-8x7b": (transformers.MixtralConfig, dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=32000, num_local_experts=8, num_experts_per_tok=2,
        max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
        sliding_window=None, router_aux_loss_coef=0.02)),
}


def small(**overrides: Any) -> ModelConfig:
    return build(ModelConfig, {**SMALL, **overrides})


def norm_params(model: nn.Module) -> int:
    return sum(p.numel() for m in model.modules() if isinstance(m, (nn.RMSNorm, nn.LayerNorm)) for p in m.parameters())


def expert(token: torch.Tensor, up: torch.Tensor, down: torch.Tensor, gated: bool) -> torch.Tensor:
    """One expert's FFN on one token, written out: SwiGLU (gate rows first) or GELU."""
    if gated:
        gate, value = (up @ token).chunk(2)
        return down @ (torch.nn.functional.silu(gate) * value)
    return down @ torch.nn.functional.gelu(up @ token)


def reference_moe(layer: MoE, x: torch.Tensor) -> torch.Tensor:
    """The MoE layer token by token: route, then sum each chosen expert's output times its weight."""
    tokens = x.reshape(-1, x.shape[-1])
    _, _, expert_ids, weights = layer.route(tokens)
    rows = []
    for n, token in enumerate(tokens):
        out = sum(weights[n, j] * expert(token, *layer.experts.expert_weights(int(e)), layer.experts.gated)
                  for j, e in enumerate(expert_ids[n]))
        if layer.shared is not None:
            shared = layer.shared(token[None])[0]
            out = out + (shared if layer.shared_gate is None else torch.sigmoid(layer.shared_gate(token)) * shared)
        rows.append(out)
    return torch.stack(rows).view_as(x)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_grouped_experts_equal_the_per_token_reference_with_gradients(name: str) -> None:
    torch.manual_seed(0)
    model = Transformer(small(**VARIANTS[name]))
    layer = model.moe_layers()[0]
    x = torch.randn(2, 12, 48, requires_grad=True)
    out, expected = layer(x), reference_moe(layer, x)
    assert torch.allclose(out, expected, atol=1e-5)
    assert int(layer.load.sum()) == 24 * layer.top_k  # dropless: every token reaches its k experts
    grads = torch.autograd.grad(out.square().sum(), [x, layer.experts.up, layer.router.weight])
    expected_grads = torch.autograd.grad(expected.square().sum(), [x, layer.experts.up, layer.router.weight])
    for got, want in zip(grads, expected_grads):
        assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_total_params_equal_an_instantiated_model(name: str) -> None:
    config = small(**VARIANTS[name])
    model = Transformer(config)
    assert config.params() == model.num_params()
    moe = config.moe
    per_expert = (3 if config.gated_ffn else 2) * config.d_model * config.expert_ffn_dim
    inactive = (config.n_layer - moe.dense_layers) * (moe.experts - moe.top_k) * per_expert
    assert config.active_params() == config.params() - inactive
    assert config.weight_bytes("bf16") == 2 * config.params()
    assert config.weight_bytes_read_per_token("bf16") == 2 * config.active_params()


@pytest.mark.parametrize("name", ["top2_of_4", "shared_gated_dense_first", "plain_gelu_experts"])
def test_flops_count_only_the_active_experts(name: str) -> None:
    """torch's FLOP counter over a forward and a training step: the matmuls done are those of the active params."""
    config = small(**VARIANTS[name], attention_backend="eager")
    model = Transformer(config)
    batch, seq = 2, 32
    ids = torch.randint(0, config.vocab_size, (batch, seq))
    with FlopCounterMode(display=False) as forward_counter:
        model(ids)
    with FlopCounterMode(display=False) as train_counter:
        (model(ids).square().mean() + model.moe_loss()).backward()
    tokens = batch * seq
    forward = tokens * (2 * (config.matmul_params() - norm_params(model)) + config.attention_flops_per_token(seq))
    assert forward_counter.get_total_flops() == forward
    assert train_counter.get_total_flops() == tokens * (config.train_flops_per_token(seq) - 6 * norm_params(model))
    assert config.matmul_params() < config.params()


@pytest.mark.parametrize("name", list(PUBLISHED_CONFIGS))
def test_moe_presets_are_the_published_models(name: str) -> None:
    config_cls, published = PUBLISHED_CONFIGS[name]
    with torch.device("meta"):
        hf_model = transformers.AutoModelForCausalLM.from_config(config_cls(**published))
    assert sum(p.numel() for p in hf_model.parameters()) == presets.get(name).params() == PUBLISHED_PARAMS[name]
    preset, imported = presets.get(name), model_config_from_hf(config_cls(**published).to_dict())
    assert imported.params() == preset.params() and imported.active_params() == preset.active_params()
    # config.json has no z-loss coefficient (OLMoE trained with 0.001: the preset keeps it)
    assert dataclasses.replace(imported.moe, z_loss_coef=preset.moe.z_loss_coef) == preset.moe
    rounded, exact = PUBLISHED_ACTIVE[name]
    assert preset.active_params() == exact and abs(exact - rounded) < 0.05e9


def test_deployment_holds_every_expert_but_reads_the_active_ones() -> None:
    olmoe, dense_7b = presets.get("olmoe-1b-7b"), presets.get("llama3.2-3b", n_layer=56)  # a dense 6.9B-ish model
    deployment = Deployment("apple-m3-max-128gb", precision="int4", context=4096)
    assert deployment.memory_needed(olmoe) == pytest.approx(0.5 * olmoe.params() + deployment.kv_cache_bytes(olmoe))
    assert deployment.bytes_read_per_token(olmoe) == pytest.approx(
        0.5 * olmoe.active_params() + deployment.kv_cache_bytes(olmoe))
    assert deployment.decode_tokens_per_s(olmoe) > 3 * deployment.decode_tokens_per_s(dense_7b)
    # The runtime bench's prediction over real tensors agrees with the calculator's (fp32 weights and KV values).
    model = Transformer(presets.get("tiny-moe"))
    runtime = Deployment("jetson-orin-nano-8gb", precision="fp32", context=100, kv_bytes=4.0)
    assert weight_bytes_read_per_token(model) == 4 * model.config.active_params()
    assert predicted_decode_tokens_per_s(model, get_device("jetson-orin-nano-8gb"), 100) == pytest.approx(
        runtime.decode_tokens_per_s(model.config))


def test_balancing_losses() -> None:
    torch.manual_seed(0)
    model = Transformer(small(moe=dict(experts=4, top_k=1, aux_loss_coef=0.5, z_loss_coef=0.25)))
    layer = model.moe_layers()[0]
    with torch.no_grad():
        layer.router.weight.zero_()  # uniform scores: P_i = 1/4 whatever the load, so aux = E * sum_i f_i / 4 = 1
    with torch.no_grad():
        layer(torch.randn(1, 16, 48))
    assert float(layer.aux_loss) == pytest.approx(1.0)
    assert float(layer.z_loss) == pytest.approx(torch.log(torch.tensor(4.0)).item() ** 2)  # logsumexp(0,0,0,0)
    assert float(layer.balance_loss) == pytest.approx(0.5 * 1.0 + 0.25 * float(layer.z_loss))
    assert float(layer.router_entropy) == pytest.approx(torch.log(torch.tensor(4.0)).item())
    with torch.no_grad():  # every token to expert 0 with probability ~1: aux = E * 1 * 1 = 4
        layer.router.weight[0] = 50 * torch.ones(48) / 48
        layer(torch.ones(1, 16, 48))
    assert float(layer.aux_loss) == pytest.approx(4.0, rel=1e-3)
    model.eval()
    before = layer.balance_loss
    with torch.no_grad():
        layer(torch.ones(1, 16, 48))
    assert layer.balance_loss is before  # evaluation computes no balancing loss


def test_loss_free_bias_chooses_but_does_not_weight_and_moves_towards_balance() -> None:
    torch.manual_seed(0)
    model = Transformer(small(moe=dict(experts=4, top_k=1, renormalize=False, loss_free_bias=True,
                                       bias_update_rate=0.1)))
    layer = model.moe_layers()[0]
    assert "blocks.0.mlp.router_bias" in model.state_dict()  # a buffer: checkpoints and resume carry it
    tokens = torch.randn(32, 48)
    layer.router_bias.copy_(torch.tensor([0.0, 0.0, 5.0, 0.0]))
    _, _, expert_ids, weights = layer.route(tokens)
    assert (expert_ids == 2).all()  # the bias decides the choice...
    scores = layer.router(tokens).float().softmax(-1)
    assert torch.equal(weights[:, 0], scores[:, 2])  # ...but the weight is the unbiased score
    layer.router_bias.zero_()
    layer.update_router_bias(torch.tensor([10.0, 0.0, 5.0, 5.0]))
    assert layer.router_bias.tolist() == pytest.approx([-0.1, 0.1, 0.0, 0.0])


def test_moe_generate_with_the_kv_cache_equals_full_recompute() -> None:
    torch.manual_seed(0)
    model = Transformer(presets.get("tiny-moe-shared")).eval()
    prompt = torch.randint(0, 256, (2, 5))
    out = model.generate(prompt, 8, temperature=0)
    ids = prompt
    with torch.no_grad():
        for _ in range(8):
            ids = torch.cat((ids, model(ids)[:, -1].argmax(-1, keepdim=True)), dim=1)
    assert torch.equal(out, ids)


@pytest.mark.parametrize(("moe", "key"), [
    (dict(experts=4, top_k=5), "moe.top_k"),
    (dict(experts=0), "moe.experts"),
    (dict(experts=4, shared_ffn_hidden=32), "moe.shared_ffn_hidden"),
    (dict(experts=4, shared_gate=True), "moe.shared_gate"),
    (dict(experts=4, dense_layers=3), "moe.dense_layers"),
    (dict(experts=4, score="relu"), "moe.score"),
    (dict(experts=4, aux_loss_coef=-1), "moe.aux_loss_coef"),
    (dict(experts=4, topk=2), "moe.topk"),
])
def test_invalid_moe_configs_name_the_key(moe: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as error:
        small(moe=moe)
    assert error.value.key == key


def run_model_info(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "launch/model_info.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_model_info_reports_active_params() -> None:
    result = run_model_info("model=olmoe-1b-7b", "format=json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["params"] == PUBLISHED_PARAMS["olmoe-1b-7b"] and report["active_params"] == 1_282_017_280
    assert report["weight_bytes_read_per_token_bf16"] == 2 * 1_282_017_280
    table = run_model_info("model=qwen1.5-moe-a2.7b")
    assert "60 experts, top-4" in table.stdout and "active_params" in table.stdout
    bad = run_model_info("model=tiny-moe", "model.moe.top_k=9")
    assert bad.returncode == 2 and diagnostics(bad.stderr).strip().splitlines() == [
        "error: model.moe.top_k: must be between 1 and experts=4, got 9"]
