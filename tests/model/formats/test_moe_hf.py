"""Mixture-of-Experts Hugging Face interop both ways: random Mixtral / OLMoE / Qwen2-MoE checkpoints built and saved by
transformers itself load with identical logits, exported slmtrain MoE models load in transformers as the architecture
their config calls for with identical logits, and what has no equivalent is refused with an error naming it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

from slmtrain.config import ConfigError
from slmtrain.model import presets
from slmtrain.model.formats.hf import export_hf, hf_architecture, load_hf, model_config_from_hf
from slmtrain.model.transformer import Transformer
from tests.model.formats.test_hf import MAX_ABS_DIFF, max_abs_diff, randomize, token_ids

SMALL_MOE: dict[str, Any] = dict(vocab_size=96, hidden_size=64, intermediate_size=48, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                 rms_norm_eps=1e-6, num_experts_per_tok=2)

HF_CHECKPOINTS: dict[str, tuple[type, type, dict[str, Any]]] = {
    "mixtral": (transformers.MixtralConfig, transformers.MixtralForCausalLM, dict(num_local_experts=4)),
    "olmoe": (transformers.OlmoeConfig, transformers.OlmoeForCausalLM,
              dict(num_experts=6, num_key_value_heads=4, tie_word_embeddings=True)),
    "olmoe_renormalised": (transformers.OlmoeConfig, transformers.OlmoeForCausalLM,
                           dict(num_experts=4, norm_topk_prob=True)),
    "qwen2_moe": (transformers.Qwen2MoeConfig, transformers.Qwen2MoeForCausalLM,
                  dict(num_experts=5, moe_intermediate_size=24, shared_expert_intermediate_size=40,
                       num_hidden_layers=3, mlp_only_layers=[0])),
}

EXPORTS: dict[str, tuple[str, dict[str, Any], str]] = {
    "mixtral": ("tiny-moe", {}, "MixtralForCausalLM"),
    "olmoe": ("tiny-moe", dict(qk_norm=True, qk_norm_scope="projection",
                               moe=dict(experts=4, top_k=3, expert_ffn_hidden=40, renormalize=False)),
              "OlmoeForCausalLM"),
    "qwen2_moe": ("tiny-moe-shared", {}, "Qwen2MoeForCausalLM"),
    "qwen2_moe_no_bias_renormalised": ("tiny-moe-shared", dict(qkv_bias=False, moe=dict(
        experts=4, top_k=2, expert_ffn_hidden=32, shared_experts=2, shared_gate=True, renormalize=True)),
        "Qwen2MoeForCausalLM"),
}


@pytest.mark.parametrize("name", list(HF_CHECKPOINTS))
def test_load_hf_moe_matches_transformers(name: str, tmp_path: Path) -> None:
    config_cls, model_cls, extra = HF_CHECKPOINTS[name]
    hf_model = model_cls(config_cls(**{**SMALL_MOE, **extra}))
    randomize(hf_model, seed=1)
    hf_model.save_pretrained(tmp_path)
    ours = load_hf(tmp_path)
    assert ours.config.moe is not None and len(ours.moe_layers()) == len(ours.blocks) - len(extra.get("mlp_only_layers", []))
    ids = token_ids(SMALL_MOE["vocab_size"])
    with torch.no_grad():
        assert max_abs_diff(ours(ids), hf_model.eval()(ids).logits) < MAX_ABS_DIFF
    assert ours.num_params() == hf_model.num_parameters() == ours.config.params()
    # And back: exported again, transformers computes the same logits from our files.
    export_hf(ours, tmp_path / "again")
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "again").eval()
    assert type(again) is model_cls
    with torch.no_grad():
        assert max_abs_diff(again(ids).logits, hf_model(ids).logits) < MAX_ABS_DIFF


@pytest.mark.parametrize("name", list(EXPORTS))
def test_export_hf_moe_loads_in_transformers_with_the_same_logits(name: str, tmp_path: Path) -> None:
    preset, overrides, architecture = EXPORTS[name]
    model = Transformer(presets.get(preset, **overrides)).eval()
    randomize(model, seed=3)
    export_hf(model, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [architecture]
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf_model).__name__ == architecture
    assert hf_model.num_parameters() == model.config.params()
    ids = token_ids(model.config.vocab_size)
    with torch.no_grad():
        assert max_abs_diff(model(ids), hf_model(ids).logits) < MAX_ABS_DIFF
        assert max_abs_diff(load_hf(tmp_path)(ids), model(ids)) < MAX_ABS_DIFF


@pytest.mark.parametrize(("overrides", "named"), [
    (dict(moe=dict(experts=4, score="sigmoid")), "moe.score=sigmoid"),
    (dict(moe=dict(experts=4, loss_free_bias=True)), "moe.loss_free_bias"),
    (dict(moe=dict(experts=4, shared_experts=1)), "without moe.shared_gate"),
    (dict(moe=dict(experts=4, dense_layers=1)), "moe.dense_layers without shared experts"),
    (dict(moe=dict(experts=4, renormalize=False)), "moe.renormalize=false"),
    (dict(qk_norm=True, moe=dict(experts=4)), "qk_norm_scope=head in an MoE model"),
    (dict(qk_norm=True, qk_norm_scope="projection"), "qk_norm_scope=projection in a dense model"),
])
def test_what_has_no_hf_equivalent_is_named(overrides: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        hf_architecture(presets.get("tiny", **overrides))


def hf_dict(config_cls: type, **extra: Any) -> dict[str, Any]:
    return config_cls(**{**SMALL_MOE, **extra}).to_dict()


@pytest.mark.parametrize(("hf", "key"), [
    (hf_dict(transformers.MixtralConfig, router_jitter_noise=0.1), "router_jitter_noise"),
    (hf_dict(transformers.MixtralConfig, sliding_window=16), "sliding_window"),
    (hf_dict(transformers.OlmoeConfig, clip_qkv=8.0), "clip_qkv"),
    (hf_dict(transformers.Qwen2MoeConfig, decoder_sparse_step=2), "decoder_sparse_step"),
    (hf_dict(transformers.Qwen2MoeConfig, mlp_only_layers=[1]), "mlp_only_layers"),
    (hf_dict(transformers.Qwen2MoeConfig, num_experts=0), "num_experts"),
    ({**hf_dict(transformers.MixtralConfig), "model_type": "deepseek_v3"}, "model_type"),  # sigmoid router + bias
    (hf_dict(transformers.MixtralConfig, num_experts_per_tok=9, num_local_experts=8), "moe.top_k"),
])
def test_unsupported_hf_moe_configs_are_one_clear_error(hf: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as error:
        model_config_from_hf(hf)
    assert error.value.key == key
