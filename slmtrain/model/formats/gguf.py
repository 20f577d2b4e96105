"""GGUF, llama.cpp's file format (through the ``gguf`` package): export a model with its tokenizer, and import a
GGUF file back into a Transformer and a tokenizer.

Architectures: ``llama``, ``qwen2`` (q/k/v biases) and ``qwen3`` (QK-norm); Mixture-of-Experts models as ``llama``
with experts (Mixtral), ``olmoe`` and ``qwen2moe`` (gated shared expert). The choice is Hugging Face export's, tensor
names and metadata are what llama.cpp's own converter writes. llama.cpp applies RoPE to adjacent pairs for ``llama``
but rotate-half (NeoX) for the others, so only ``llama`` q/k rows are permuted. Fused q/k/v and gate/up matrices are
split (the experts' into one 3D tensor each for gate, up and down), Llama-3 RoPE scaling becomes a ``rope_freqs``
factor tensor. Matrices, 3D expert stacks included, are stored in the chosen type (quantised by ``gguf.quants`` along
their rows); norms, biases and MoE routers stay f32, and a matrix whose rows are not a whole number of quantisation
blocks is stored as f16, as llama.cpp's quantizer does.

Import reads every architecture it writes, and a ``rope_freqs`` tensor back as the Llama-3 scaling it encodes
(files of Llama 3.1 and later). llama.cpp's MoE graphs fix the routing (softmax; the top-k weights
renormalised for ``llama`` only), so a config they would compute differently (no renormalisation in Mixtral's
layout, renormalisation in OLMoE's or Qwen2-MoE's, leading dense layers, GQA under OLMoE's key norm) is refused.

The tensor names come from one table (:func:`gguf_table`) that export and import both walk; the tokenizer travels as
``gguf_vocab`` writes and reads it. Files are written under a temporary name and renamed when complete.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from slmtrain.config import ConfigError, UserError, check_choice
from slmtrain.model.config import ModelConfig, MoEConfig, RopeScaling
from slmtrain.model.formats.gguf_vocab import GGUFTokenizer, add_vocabulary, gguf_field, gguf_tokenizer
from slmtrain.model.formats.gguf_vocab import IGNORES_MERGES, llama_cpp_pre_tokenizers  # noqa: F401 (named here too)
from slmtrain.model.formats.hf import hf_architecture, model_from_state_dict
from slmtrain.model.formats.mapping import (HALVES, SAME, VECTOR, Layers, Row, Transform, export_tensors, first_rows,
                                            import_tensors, row, split, then)
from slmtrain.model.transformer import Transformer, rope_inverse_frequencies

ARCHITECTURES = ("llama", "qwen2", "qwen3", "olmoe", "qwen2moe")  # llama.cpp's names
MOE_ARCHITECTURES = {"mixtral": "llama", "olmoe": "olmoe", "qwen2_moe": "qwen2moe"}  # transformers' -> llama.cpp's
OUTPUT_REQUIRED = ("olmoe", "qwen2moe")  # llama.cpp requires output.weight here: a tied model writes a copy
T = gguf.MODEL_TENSOR
DENSE_FFN = (T.FFN_GATE, T.FFN_UP, T.FFN_DOWN)
ROUTED_EXPERTS = (T.FFN_GATE_EXP, T.FFN_UP_EXP, T.FFN_DOWN_EXP)  # (experts, rows, columns) each
SHARED_EXPERT = (T.FFN_GATE_SHEXP, T.FFN_UP_SHEXP, T.FFN_DOWN_SHEXP)
ROUTER = gguf.TENSOR_NAMES[T.FFN_GATE_INP].rsplit(".", 1)[-1]  # ffn_gate_inp: llama.cpp's converter keeps it f32
Q = gguf.GGMLQuantizationType
QUANTS = {  # every type gguf.quants writes and llama.cpp's CPU backend reads for these architectures
    "f32": (Q.F32, gguf.LlamaFileType.ALL_F32), "f16": (Q.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (Q.BF16, gguf.LlamaFileType.MOSTLY_BF16), "q8_0": (Q.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    "q5_1": (Q.Q5_1, gguf.LlamaFileType.MOSTLY_Q5_1), "q5_0": (Q.Q5_0, gguf.LlamaFileType.MOSTLY_Q5_0),
    "q4_1": (Q.Q4_1, gguf.LlamaFileType.MOSTLY_Q4_1), "q4_0": (Q.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0),
}


def _name(tensor: gguf.MODEL_TENSOR, block: int | str | None = None, suffix: str = "weight") -> str:
    template = gguf.TENSOR_NAMES[tensor]
    return (template.format(bid=block) if block is not None else template) + "." + suffix


# --------------------------------------------------------------------------------------------------------- export
def gguf_architecture(config: ModelConfig) -> str:
    """The llama.cpp architecture that runs ``config`` exactly; ConfigError naming what none of them has."""
    model_type = hf_architecture(config)
    arch = MOE_ARCHITECTURES.get(model_type, model_type)
    if config.ffn != "swiglu":
        raise ConfigError("model", f"llama.cpp's {arch} architecture needs ffn=swiglu, got {config.ffn}")
    if arch in ("qwen2", "qwen2moe") and config.n_head * config.head_dim_ != config.d_model:
        raise ConfigError("model", f"llama.cpp's {arch} architecture needs n_head * head_dim == d_model")
    if arch != "llama" and config.rope_scaling.kind == "llama3":
        raise ConfigError("model", f"llama.cpp's {arch} architecture has no Llama-3 RoPE scaling")
    if config.moe is not None:
        _check_moe(config, arch)
    return arch


def _check_moe(config: ModelConfig, arch: str) -> None:
    """What llama.cpp's MoE graphs fix that transformers' classes leave open (hf_architecture refused the rest)."""
    moe = config.moe
    assert moe is not None
    if arch != "llama" and moe.renormalize:
        raise ConfigError("moe.renormalize", f"llama.cpp's {arch} architecture weights the experts by their router "
                                             "probabilities as they are: needs moe.renormalize=false")
    if moe.dense_layers:
        raise ConfigError("moe.dense_layers", f"llama.cpp's {arch} architecture has experts in every layer (no "
                                              "leading dense blocks): needs moe.dense_layers=0")
    if arch == "olmoe" and config.kv_heads != config.n_head:
        raise ConfigError("n_kv_head", "llama.cpp's olmoe architecture normalises the keys over d_model: needs "
                                       "n_kv_head == n_head")


def permute_for_gguf(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of a q or k projection (or bias) from rotate-half order (pairs i, i + d/2) to interleaved (2i, 2i + 1)."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, -1).swapaxes(1, 2).reshape(weight.shape)


def unpermute_from_gguf(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """The inverse of :func:`permute_for_gguf`."""
    rows = weight.shape[0]
    return weight.reshape(heads, rows // heads // 2, 2, -1).swapaxes(1, 2).reshape(weight.shape)


def interleaved(heads: int) -> Transform:
    return Transform(lambda t: [permute_for_gguf(t, heads)], lambda parts: unpermute_from_gguf(parts[0], heads))


def gguf_table(config: ModelConfig, arch: str) -> list[Row]:
    """slmtrain name <-> llama.cpp names in architecture ``arch``: fused q/k/v and gate/up split (the routed
    experts' into one 3D stack each for gate, up and down), q/k rows interleaved for ``llama``."""
    q, kv, vocab = config.n_head * config.head_dim_, config.kv_heads * config.head_dim_, config.vocab_size
    qkv = split(q, kv, kv)
    if arch == "llama":  # llama.cpp rotates adjacent pairs of q and k rows there, rotate-half elsewhere
        qkv = then(qkv, (interleaved(config.n_head), interleaved(config.kv_heads), SAME))
    table = [
        row("embed.weight", _name(T.TOKEN_EMBD), transform=first_rows(vocab)),
        row("norm.weight", _name(T.OUTPUT_NORM)),
        *(row(f"blocks.{{i}}.attn.qkv.{kind}", *(_name(t, "{i}", kind) for t in (T.ATTN_Q, T.ATTN_K, T.ATTN_V)),
              transform=qkv) for kind in (("weight", "bias") if config.qkv_bias else ("weight",))),
        row("blocks.{i}.attn.out.weight", _name(T.ATTN_OUT, "{i}")),
        row("blocks.{i}.attn_norm.weight", _name(T.ATTN_NORM, "{i}")),
        row("blocks.{i}.mlp_norm.weight", _name(T.FFN_NORM, "{i}")),
        *_gated_ffn("blocks.{i}.mlp.up.weight", "blocks.{i}.mlp.down.weight", DENSE_FFN, layers="dense"),
    ]
    if not config.tie_embeddings:  # llama.cpp reuses token_embd when output is absent
        table.append(row("lm_head.weight", _name(T.OUTPUT), transform=first_rows(vocab)))
    if config.qk_norm:
        table += [row("blocks.{i}.attn.q_norm.weight", _name(T.ATTN_Q_NORM, "{i}")),
                  row("blocks.{i}.attn.k_norm.weight", _name(T.ATTN_K_NORM, "{i}"))]
    if config.moe is None:
        return table
    table += [row("blocks.{i}.mlp.router.weight", _name(T.FFN_GATE_INP, "{i}"), layers="moe"),
              *_gated_ffn("blocks.{i}.mlp.experts.up", "blocks.{i}.mlp.experts.down", ROUTED_EXPERTS, layers="moe")]
    if config.moe.shared_experts:  # all of them run as one wider FFN, llama.cpp's single shared expert
        table += _gated_ffn("blocks.{i}.mlp.shared.up.weight", "blocks.{i}.mlp.shared.down.weight", SHARED_EXPERT,
                            layers="moe")
    if config.moe.shared_gate:
        table.append(row("blocks.{i}.mlp.shared_gate.weight", _name(T.FFN_GATE_INP_SHEXP, "{i}"), transform=VECTOR,
                         layers="moe"))
    return table


def _gated_ffn(up: str, down: str, kinds: tuple[gguf.MODEL_TENSOR, ...], layers: Layers) -> list[Row]:
    """A SwiGLU FFN: slmtrain's fused gate-then-up matrix (a 3D stack for the routed experts) and its down one."""
    gate_kind, up_kind, down_kind = kinds
    return [row(up, _name(gate_kind, "{i}"), _name(up_kind, "{i}"), transform=HALVES, layers=layers),
            row(down, _name(down_kind, "{i}"), layers=layers)]


def gguf_tensors(model: Transformer) -> dict[str, torch.Tensor]:
    """llama.cpp tensor name -> fp32 tensor in numpy (row-major) layout."""
    c = model.config
    arch = gguf_architecture(c)
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    out = export_tensors(gguf_table(c, arch), c, sd)
    if c.tie_embeddings and arch in OUTPUT_REQUIRED:  # a copy: this file then reads back as an untied model
        out[_name(T.OUTPUT)] = out[_name(T.TOKEN_EMBD)]
    if c.rope_scaling.kind == "llama3":  # per-frequency divisors, what llama.cpp applies to its base frequencies
        base = rope_inverse_frequencies(c.head_dim_, c.rope_theta, type(c.rope_scaling)())
        scaled = rope_inverse_frequencies(c.head_dim_, c.rope_theta, c.rope_scaling)
        out[_name(T.ROPE_FREQS)] = base / scaled
    return out


def export_gguf(model: Transformer, path: str | Path, quant: str = "f16", tokenizer: Any = None,
                name: str = "slmtrain") -> dict[str, Any]:
    """Write ``path``; returns a summary (architecture, tensor types, bytes, the vocabulary embedded). Every check
    runs before the file is opened, and the file appears only once complete."""
    if quant.lower() in ("q4_k", "q6_k", "q4_k_m", "q5_k_m"):
        raise ConfigError("quant", f"{quant}: the gguf package cannot quantise K-quants (it only reads them); "
                                   f"export f16 and run llama.cpp's llama-quantize on it")
    check_choice("quant", quant, tuple(QUANTS))
    c = model.config
    arch = gguf_architecture(c)
    writer = gguf.GGUFWriter(None, arch)
    writer.add_name(name)
    writer.add_context_length(c.max_seq_len)
    writer.add_embedding_length(c.d_model)
    writer.add_block_count(c.n_layer)
    # llama and olmoe size their experts by feed_forward_length; qwen2moe has keys of its own for them
    writer.add_feed_forward_length(c.expert_ffn_dim if c.moe is not None and arch != "qwen2moe" else c.ffn_dim)
    writer.add_head_count(c.n_head)
    writer.add_head_count_kv(c.kv_heads)
    writer.add_key_length(c.head_dim_)
    writer.add_value_length(c.head_dim_)
    writer.add_layer_norm_rms_eps(c.norm_eps)
    writer.add_rope_freq_base(c.rope_theta)
    writer.add_rope_dimension_count(c.head_dim_)
    if c.rope_scaling.kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(c.rope_scaling.factor)
    writer.add_vocab_size(c.vocab_size)
    if c.moe is not None:
        writer.add_expert_count(c.moe.experts)
        writer.add_expert_used_count(c.moe.top_k)
    if arch == "qwen2moe":
        writer.add_expert_feed_forward_length(c.expert_ffn_dim)
        writer.add_expert_shared_feed_forward_length(c.shared_ffn_dim)
    matrix_type, file_type = QUANTS[quant]
    writer.add_file_type(file_type)
    vocabulary = add_vocabulary(writer, tokenizer, c.vocab_size)
    types: dict[str, str] = {}
    for tensor_name, tensor in gguf_tensors(model).items():
        data = tensor.numpy().astype(np.float32)
        qtype = matrix_type if data.ndim > 1 and tensor_name.split(".")[-2] != ROUTER else Q.F32
        if data.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
            qtype = Q.F16
        writer.add_tensor(tensor_name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        types[tensor_name] = qtype.name
    path = Path(path)
    _write_whole(writer, path)
    return {"path": str(path), "architecture": arch, "quant": quant, "bytes": path.stat().st_size,
            "tensors": len(types), "tensor_types": sorted(set(types.values())), "vocabulary": vocabulary}


def _write_whole(writer: gguf.GGUFWriter, path: Path) -> None:
    """Write to ``path.partial`` and rename: a failure never leaves a half-written file under the real name."""
    partial = path.with_name(path.name + ".partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer.write_header_to_file(partial)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        partial.replace(path)
    except OSError as e:
        writer.close()
        if partial.exists():
            partial.unlink()
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None


# --------------------------------------------------------------------------------------------------------- import
def read_gguf(path: str | Path) -> dict[str, tuple[tuple[int, ...], str, np.ndarray]]:
    """Tensor name -> (numpy-order shape, GGML type name, dequantised fp32 values)."""
    return _dequantised_tensors(_open(Path(path)), Path(path))


def _open(path: Path) -> gguf.GGUFReader:
    if not path.is_file():
        raise UserError(f"GGUF file not found: {path}")
    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:  # truncated or foreign: the reader fails somewhere in its parsing
        raise UserError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None


def _dequantised_tensors(reader: gguf.GGUFReader, path: Path) -> dict[str, tuple[tuple[int, ...], str, np.ndarray]]:
    out = {}
    for tensor in reader.tensors:
        shape = tuple(int(n) for n in reversed(tensor.shape))  # GGUF lists the fastest-varying dimension first
        try:
            values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(shape)
        except (NotImplementedError, ValueError) as e:
            raise UserError(f"{path}: tensor {tensor.name} ({tensor.tensor_type.name}) cannot be read: {e}") from None
        out[tensor.name] = (shape, tensor.tensor_type.name, values.astype(np.float32))
    return out


def gguf_model_config(reader: gguf.GGUFReader, shapes: dict[str, tuple[int, ...]], path: Path,
                      rope_freqs: np.ndarray | None = None) -> ModelConfig:
    """The ModelConfig a GGUF file's metadata (and its ``rope_freqs`` tensor, if any) describes; UserError naming
    what slmtrain does not model."""
    arch = gguf_field(reader, "general.architecture")
    if arch not in ARCHITECTURES:
        raise UserError(f"{path}: unsupported architecture {arch!r}; supported: {', '.join(ARCHITECTURES)}")

    def key(name: str, default: Any = None) -> Any:
        value = gguf_field(reader, f"{arch}.{name}", default)
        if value is None:
            raise UserError(f"{path}: metadata {arch}.{name} missing")
        return value

    if _name(T.TOKEN_EMBD) not in shapes:
        raise UserError(f"{path}: no {_name(T.TOKEN_EMBD)} tensor")
    n_head, d_model = int(key("attention.head_count")), int(key("embedding_length"))
    head_dim = int(key("attention.key_length", d_model // n_head))  # stored even when it is d_model // n_head
    if int(key("rope.dimension_count", head_dim)) != head_dim:
        raise UserError(f"{path}: partial rotary embeddings (rope.dimension_count < head_dim) are not supported")
    scaling_type = gguf_field(reader, f"{arch}.rope.scaling.type", "none")
    if scaling_type not in ("none", "linear"):
        raise UserError(f"{path}: unsupported RoPE scaling {scaling_type!r}; supported: none, linear")
    rope_theta = _decimal(key("rope.freq_base", 1e4))
    scaling = RopeScaling()
    if scaling_type == "linear":
        scaling = RopeScaling(kind="linear", factor=float(key("rope.scaling.factor")))
    elif rope_freqs is not None:
        if rope_freqs.shape != (head_dim // 2,):
            raise UserError(f"{path}: rope_freqs has shape {rope_freqs.shape}, expected ({head_dim // 2},)")
        scaling = llama3_scaling(rope_freqs, head_dim, rope_theta, path)
    ffn_hidden = int(key("feed_forward_length"))
    return ModelConfig(
        vocab_size=shapes[_name(T.TOKEN_EMBD)][0], n_layer=int(key("block_count")), d_model=d_model, n_head=n_head,
        n_kv_head=int(key("attention.head_count_kv", n_head)),
        head_dim=None if head_dim == d_model // n_head else head_dim,
        ffn_hidden=ffn_hidden, ffn="swiglu",
        norm_eps=_decimal(key("attention.layer_norm_rms_epsilon")), rope_theta=rope_theta,
        rope_scaling=scaling, max_seq_len=int(key("context_length")),
        tie_embeddings=_name(T.OUTPUT) not in shapes,
        qkv_bias=_name(T.ATTN_Q, 0, "bias") in shapes,
        qk_norm=_name(T.ATTN_Q_NORM, 0) in shapes, qk_norm_scope="projection" if arch == "olmoe" else "head",
        moe=_moe_config(arch, key, ffn_hidden) if int(key("expert_count", 0)) else None,
    )


def llama3_scaling(factors: np.ndarray, head_dim: int, theta: float, path: Path | str) -> RopeScaling:
    """Llama-3 RoPE scaling from llama.cpp's per-frequency divisors (``rope_freqs``: base / scaled frequency). They
    are 1 for short wavelengths, ``factor`` for long ones and 1 / ((1 - s) / factor + s) between, where
    s = (L / wavelength - low) / (high - low) is linear in the frequency. That line fixes L, low and high up to one
    common scale, so low_freq_factor is taken as 1 (every Llama 3.x release's) and the other two follow from it;
    the divisors the result gives must be the file's, or the file is refused."""
    factors = factors.astype(np.float64)
    factor = float(factors.max())
    if np.allclose(factors, 1.0, rtol=0, atol=1e-7):
        return RopeScaling()
    base = rope_inverse_frequencies(head_dim, theta, RopeScaling()).double().numpy()
    between = (factors > 1 + 1e-6) & (factors < factor * (1 - 1e-6))
    if between.sum() < 2:
        raise UserError(f"{path}: rope_freqs has {int(between.sum())} interpolated frequencies; Llama-3 scaling "
                        "needs 2 to be recovered")
    smooth = (1 / factors[between] - 1 / factor) / (1 - 1 / factor)
    slope, intercept = np.polyfit(base[between], smooth, 1)  # slope = L / (2 pi (high - 1)), intercept = -1 / (high - 1)
    high = 1 - 1 / intercept
    scaling = RopeScaling(kind="llama3", factor=_significant(factor), low_freq_factor=1.0,
                          high_freq_factor=_significant(high),
                          original_max_seq_len=round(slope * 2 * np.pi * (high - 1)))
    recovered = base / rope_inverse_frequencies(head_dim, theta, scaling).double().numpy()
    if not np.allclose(recovered, factors, rtol=1e-5, atol=0):
        raise UserError(f"{path}: rope_freqs is not a Llama-3 RoPE scaling (closest: factor {scaling.factor}, "
                        f"high_freq_factor {scaling.high_freq_factor}, original length {scaling.original_max_seq_len})")
    return scaling


def _significant(value: float) -> float:
    """A value recovered from float32 arithmetic as the decimal it most likely was (4.0, not 3.9999998)."""
    return float(f"{value:.6g}")


def _moe_config(arch: str, key: Callable[..., Any], ffn_hidden: int) -> MoEConfig:
    """The routing each llama.cpp MoE architecture hard-codes (softmax; top-k renormalised for llama only) with the
    sizes in the metadata; qwen2moe's shared expert is one FFN of the shared width, gated."""
    shared = arch == "qwen2moe"
    return MoEConfig(experts=int(key("expert_count")), top_k=int(key("expert_used_count")),
                     expert_ffn_hidden=int(key("expert_feed_forward_length", ffn_hidden)),
                     shared_experts=int(shared), shared_gate=shared, renormalize=arch == "llama",
                     shared_ffn_hidden=int(key("expert_shared_feed_forward_length")) if shared else None)


def _decimal(value: float) -> float:
    """A float32 metadata value as the decimal it was written from (1e-05, not 9.99999974e-06)."""
    return float(str(np.float32(value)))


def load_gguf(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[Transformer, GGUFTokenizer | None]:
    """A Transformer and tokenizer from a llama.cpp GGUF file: hyperparameters from its metadata, tensors
    dequantised by the gguf package, the tokenizer rebuilt from its vocabulary (None for ``none``)."""
    path = Path(path)
    reader = _open(path)
    tensors = _dequantised_tensors(reader, path)
    values = {name: array for name, (_, _, array) in tensors.items()}
    config = gguf_model_config(reader, {name: shape for name, (shape, _, _) in tensors.items()}, path,
                               values.get(_name(T.ROPE_FREQS)))
    try:
        table = gguf_table(config, gguf_field(reader, "general.architecture"))
        state = import_tensors(table, config, lambda name: torch.from_numpy(values[name]))
    except KeyError as e:
        raise UserError(f"{path}: tensor {e} missing for the architecture its metadata names") from None
    try:
        model = model_from_state_dict(config, state, dtype)
    except RuntimeError as e:  # shapes that contradict the metadata
        raise UserError(f"{path}: tensors do not match the metadata ({str(e).splitlines()[-1].strip()})") from None
    return model, gguf_tokenizer(reader, path)
