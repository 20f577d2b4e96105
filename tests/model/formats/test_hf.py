"""Hugging Face interop both ways: random checkpoints built and saved by transformers itself load with identical
logits, exported slmtrain models load in transformers with identical logits, and what cannot be represented (or
loaded safely) is refused with an error naming it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

from slmtrain.config import ConfigError, UserError
from slmtrain.model import presets
from slmtrain.model.formats.hf import export_hf, load_hf, model_config_from_hf
from slmtrain.model.transformer import Transformer

MAX_ABS_DIFF = 1e-4
SMALL_HF: dict[str, Any] = dict(vocab_size=96, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                                num_attention_heads=4, max_position_embeddings=64, rms_norm_eps=1e-6)
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}

HF_CHECKPOINTS: dict[str, tuple[type, type, dict[str, Any]]] = {
    "llama_gqa_untied": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
                         dict(num_key_value_heads=2, tie_word_embeddings=False)),
    "llama_mha_tied": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
                       dict(num_key_value_heads=4, tie_word_embeddings=True)),
    "llama_mqa_head_dim": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
                           dict(num_key_value_heads=1, head_dim=24, tie_word_embeddings=True)),
    "llama3_rope": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
                    dict(num_key_value_heads=2, rope_parameters=LLAMA3_ROPE)),
    "llama_linear_rope": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
                          dict(num_key_value_heads=2, rope_parameters={"rope_type": "linear", "rope_theta": 10000.0,
                                                                      "factor": 4.0})),
    "qwen2_bias_tied": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM,
                        dict(num_key_value_heads=2, tie_word_embeddings=True)),
    "qwen2_bias_untied": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM,
                          dict(num_key_value_heads=1, tie_word_embeddings=False)),
    "qwen3_qk_norm": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM,
                      dict(num_key_value_heads=2, head_dim=32, tie_word_embeddings=True)),
}

EXPORTS: dict[str, tuple[dict[str, Any], str]] = {
    "gqa_tied": (dict(), "LlamaForCausalLM"),
    "mha_untied": (dict(n_kv_head=None, tie_embeddings=False), "LlamaForCausalLM"),
    "qkv_bias": (dict(qkv_bias=True), "Qwen2ForCausalLM"),
    "qk_norm": (dict(qk_norm=True, head_dim=32), "Qwen3ForCausalLM"),
    "llama3_rope": (dict(rope_theta=500000.0, rope_scaling=dict(kind="llama3", factor=8.0, original_max_seq_len=16)),
                    "LlamaForCausalLM"),
    "linear_rope": (dict(rope_scaling=dict(kind="linear", factor=2.0)), "LlamaForCausalLM"),
    "geglu": (dict(ffn="geglu"), "LlamaForCausalLM"),
    "vocab_padding": (dict(vocab_size=250, vocab_multiple_of=64, tie_embeddings=False), "LlamaForCausalLM"),
}


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Every parameter random, norms and biases included, so that a mis-mapped tensor cannot hide."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            param.copy_(1.0 + 0.1 * noise if "norm" in name else 0.05 * noise)


def token_ids(vocab_size: int) -> torch.Tensor:
    return torch.randint(0, vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


@pytest.mark.parametrize("name", list(HF_CHECKPOINTS))
def test_load_hf_matches_transformers(name: str, tmp_path: Path) -> None:
    config_cls, model_cls, extra = HF_CHECKPOINTS[name]
    hf_model = model_cls(config_cls(**SMALL_HF, **extra))
    randomize(hf_model, seed=1)
    hf_model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    ours = load_hf(tmp_path)
    ids = token_ids(SMALL_HF["vocab_size"])
    with torch.no_grad():
        assert max_abs_diff(ours(ids), hf_model.eval()(ids).logits) < MAX_ABS_DIFF
    assert ours.num_params() == hf_model.num_parameters()
    assert ours.config.tie_embeddings == extra.get("tie_word_embeddings", False)
    if ours.config.tie_embeddings:
        assert ours.lm_head.weight is ours.embed.weight


def test_load_hf_reads_sharded_checkpoints(tmp_path: Path) -> None:
    hf_model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SMALL_HF, num_key_value_heads=2))
    randomize(hf_model, seed=2)
    hf_model.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    ids = token_ids(SMALL_HF["vocab_size"])
    with torch.no_grad():
        assert max_abs_diff(load_hf(tmp_path)(ids), hf_model.eval()(ids).logits) < MAX_ABS_DIFF


def test_load_hf_in_bf16(tmp_path: Path) -> None:
    hf_model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SMALL_HF))
    hf_model.save_pretrained(tmp_path)
    model = load_hf(tmp_path, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model(token_ids(96)).dtype == torch.bfloat16


@pytest.mark.parametrize("name", list(EXPORTS))
def test_export_hf_loads_in_transformers_with_the_same_logits(name: str, tmp_path: Path) -> None:
    overrides, architecture = EXPORTS[name]
    model = Transformer(presets.get("tiny", **overrides)).eval()
    randomize(model, seed=3)
    export_hf(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [architecture]
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf_model).__name__ == architecture
    vocab = model.config.vocab_size
    ids = token_ids(vocab)
    with torch.no_grad():
        hf_logits = hf_model(ids).logits[..., :vocab]  # padding rows are exported; their logits are not ours
        assert max_abs_diff(model(ids), hf_logits) < MAX_ABS_DIFF
    # And back: the re-imported model is the same function.
    with torch.no_grad():
        assert max_abs_diff(load_hf(tmp_path)(ids)[..., :vocab], model(ids)) < MAX_ABS_DIFF


def test_export_hf_writes_the_tokenizer_and_dtype(tmp_path: Path) -> None:
    class Tokenizer:
        def save_hf(self, out_dir: str | Path) -> None:
            (Path(out_dir) / "tokenizer.json").write_text("{}")

    model = Transformer(presets.get("tiny"))
    export_hf(model, tmp_path, Tokenizer(), bos_id=1, eos_id=2, dtype=torch.bfloat16)
    assert (tmp_path / "tokenizer.json").is_file()
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert hf_model.dtype == torch.bfloat16
    assert (hf_model.config.bos_token_id, hf_model.config.eos_token_id) == (1, 2)


# ---------------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (dict(norm="layernorm"), "norm=layernorm"),
        (dict(position="learned"), "position=learned"),
        (dict(ffn="relu"), "ffn=relu"),
        (dict(qk_norm=True, qkv_bias=True), "qk_norm together with qkv_bias"),
    ],
)
def test_export_refuses_models_transformers_cannot_represent(overrides: dict[str, Any], named: str,
                                                             tmp_path: Path) -> None:
    model = Transformer(presets.get("tiny", **overrides))
    with pytest.raises(ConfigError, match=f"no Hugging Face architecture for .*{named}"):
        export_hf(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_unsupported_architecture_is_named(tmp_path: Path) -> None:
    transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="unsupported architecture 'gpt2'; supported: llama, qwen2, qwen3"):
        load_hf(tmp_path)


def test_unsupported_rope_scaling_is_named(tmp_path: Path) -> None:
    yarn = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 16}
    transformers.LlamaConfig(**SMALL_HF, rope_parameters=yarn).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="unsupported rope scaling 'yarn'; supported: default, linear, llama3"):
        load_hf(tmp_path)


def test_pickle_only_checkpoint_is_refused(tmp_path: Path) -> None:
    hf_model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SMALL_HF))
    hf_model.config.save_pretrained(tmp_path)
    torch.save(hf_model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(UserError, match=r"only safetensors weights are loaded \(pickle .bin/.pt files are unsafe"):
        load_hf(tmp_path)


def test_missing_or_broken_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is not a Hugging Face model directory: no config.json"):
        load_hf(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="config.json: invalid JSON"):
        load_hf(tmp_path)
    transformers.LlamaConfig(**SMALL_HF).save_pretrained(tmp_path)
    with pytest.raises(UserError, match="no model.safetensors found"):
        load_hf(tmp_path)
    for damaged in (b"", b"\x10\x00\x00\x00\x00\x00\x00\x00{", b"garbage" * 100):
        (tmp_path / "model.safetensors").write_bytes(damaged)
        with pytest.raises(UserError, match="model.safetensors: not a readable safetensors file"):
            load_hf(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "hidden_size": "abc"}))
    with pytest.raises(UserError, match="config.json: not a usable transformers config .ValueError"):
        load_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "vocab_size"}))
    with pytest.raises(UserError, match="config.json: not a usable transformers config .KeyError: 'vocab_size'"):
        load_hf(tmp_path)


def test_weights_that_do_not_match_the_config_are_named(tmp_path: Path) -> None:
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**SMALL_HF)).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(UserError, match="weights do not match config.json, missing tensor 'model.layers.2."):
        load_hf(tmp_path)


@pytest.mark.parametrize(
    ("extra", "key", "message"),
    [
        (dict(hidden_act="relu"), "hidden_act", "unsupported activation 'relu'; supported: silu, gelu_pytorch_tanh"),
        (dict(mlp_bias=True), "mlp_bias", "MLP biases are not supported"),
        (dict(attention_bias=True), "attention_bias", "not supported"),
        (dict(model_type="qwen2", use_sliding_window=True), "use_sliding_window", "sliding-window attention"),
        (dict(model_type="mistral"), "model_type", "unsupported architecture 'mistral'"),
    ],
)
def test_unsupported_config_features_are_named(extra: dict[str, Any], key: str, message: str) -> None:
    config = {"model_type": "llama", **SMALL_HF, **extra}
    with pytest.raises(ConfigError, match=message) as info:
        model_config_from_hf(config)
    assert info.value.key == key


def test_config_json_defaults_follow_transformers() -> None:
    """Keys missing from a hand-written config.json mean what transformers' own config classes default to."""
    for model_type, cls in (("llama", transformers.LlamaConfig), ("qwen2", transformers.Qwen2Config),
                            ("qwen3", transformers.Qwen3Config)):
        ours = model_config_from_hf({"model_type": model_type, **SMALL_HF})
        theirs = cls(**SMALL_HF)
        assert ours.tie_embeddings == theirs.tie_word_embeddings, model_type
        assert ours.norm_eps == theirs.rms_norm_eps, model_type
        assert ours.rope_theta == theirs.rope_parameters["rope_theta"], model_type


def test_export_drops_vocabulary_padding_rows(tmp_path):
    """Padded embedding rows are never trained: an export that kept them would give them probability in HF."""
    import torch

    from slmtrain.model import presets
    from slmtrain.model.formats.hf import export_hf, load_hf
    from slmtrain.model.transformer import Transformer

    model = Transformer(presets.get("tiny", vocab_size=250, vocab_multiple_of=64)).eval()
    export_hf(model, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 250, (1, 16))
    with torch.no_grad():
        ours, theirs = model(ids), hf(ids).logits
    assert theirs.shape[-1] == 250
    assert (ours - theirs).abs().max() < 1e-4
    assert load_hf(tmp_path).config.vocab_size == 250
