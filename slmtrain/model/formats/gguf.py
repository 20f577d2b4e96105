"""GGUF export (the ``gguf`` package), so a model runs in llama.cpp and the tools built on it.

Llama-architecture tensor names and metadata, as llama.cpp's own ``convert_hf_to_gguf.py`` writes them: q and k
rows are permuted from the rotate-half RoPE layout (slmtrain, transformers) to llama.cpp's interleaved pairs, the
fused q/k/v and gate/up matrices are split, Llama-3 RoPE scaling becomes a ``rope_freqs`` factor tensor. Matrices
are stored as f16, q8_0 or q4_0 (quantised by ``gguf.quants``); norms stay f32, and a matrix whose rows are not a
whole number of quantisation blocks falls back to f16. A SentencePiece tokenizer (slmtrain's) is embedded as
llama.cpp's ``llama`` vocabulary; other tokenizers are left out, which the result says.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from slmtrain.config import ConfigError, check_choice
from slmtrain.model.formats.hf import hf_architecture
from slmtrain.model.transformer import Transformer, rope_inverse_frequencies

QUANT_TYPES = {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0,
               "q4_0": gguf.GGMLQuantizationType.Q4_0}
FILE_TYPES = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
              "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}


def _name(tensor: gguf.MODEL_TENSOR, block: int | None = None) -> str:
    template = gguf.TENSOR_NAMES[tensor]
    return (template.format(bid=block) if block is not None else template) + ".weight"


def permute_for_gguf(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of a q or k projection from rotate-half order (pairs i, i + d/2) to interleaved (2i, 2i + 1)."""
    rows, cols = weight.shape
    return weight.reshape(heads, 2, rows // heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def gguf_tensors(model: Transformer) -> dict[str, torch.Tensor]:
    """llama.cpp tensor name -> fp32 tensor in numpy (row-major) layout."""
    if hf_architecture(model.config) != "llama" or model.config.ffn != "swiglu":
        raise ConfigError("model", "GGUF export covers the llama architecture: rmsnorm, rope, swiglu, "
                                   "no qkv_bias or qk_norm")
    c, T = model.config, gguf.MODEL_TENSOR
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    out = {_name(T.TOKEN_EMBD): sd["embed.weight"][: c.vocab_size], _name(T.OUTPUT_NORM): sd["norm.weight"]}
    if not c.tie_embeddings:  # llama.cpp reuses token_embd when output is absent
        out[_name(T.OUTPUT)] = sd["lm_head.weight"][: c.vocab_size]
    q_size, kv_size = c.n_head * c.head_dim_, c.kv_heads * c.head_dim_
    for i in range(c.n_layer):
        p = f"blocks.{i}."
        q, k, v = sd[p + "attn.qkv.weight"].split([q_size, kv_size, kv_size])
        gate, up = sd[p + "mlp.up.weight"].chunk(2)
        out.update({
            _name(T.ATTN_NORM, i): sd[p + "attn_norm.weight"],
            _name(T.ATTN_Q, i): permute_for_gguf(q, c.n_head),
            _name(T.ATTN_K, i): permute_for_gguf(k, c.kv_heads),
            _name(T.ATTN_V, i): v,
            _name(T.ATTN_OUT, i): sd[p + "attn.out.weight"],
            _name(T.FFN_NORM, i): sd[p + "mlp_norm.weight"],
            _name(T.FFN_GATE, i): gate,
            _name(T.FFN_UP, i): up,
            _name(T.FFN_DOWN, i): sd[p + "mlp.down.weight"],
        })
    if c.rope_scaling.kind == "llama3":  # per-frequency divisors, what llama.cpp applies to its base frequencies
        base = rope_inverse_frequencies(c.head_dim_, c.rope_theta, type(c.rope_scaling)())
        scaled = rope_inverse_frequencies(c.head_dim_, c.rope_theta, c.rope_scaling)
        out[_name(T.ROPE_FREQS)] = base / scaled
    return out


def export_gguf(model: Transformer, path: str | Path, quant: str = "f16", tokenizer: Any = None,
                name: str = "slmtrain") -> dict[str, Any]:
    """Write ``path``; returns a summary (tensor types, bytes, whether a vocabulary was embedded)."""
    check_choice("quant", quant, tuple(QUANT_TYPES))
    c = model.config
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(c.max_seq_len)
    writer.add_embedding_length(c.d_model)
    writer.add_block_count(c.n_layer)
    writer.add_feed_forward_length(c.ffn_dim)
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
    writer.add_file_type(FILE_TYPES[quant])
    vocabulary = _add_sentencepiece_vocab(writer, tokenizer, c.vocab_size)
    types: dict[str, str] = {}
    for tensor_name, tensor in gguf_tensors(model).items():
        data = tensor.numpy().astype(np.float32)
        qtype = QUANT_TYPES[quant] if data.ndim == 2 else gguf.GGMLQuantizationType.F32
        block = gguf.GGML_QUANT_SIZES[qtype][0]
        if data.shape[-1] % block:
            qtype = gguf.GGMLQuantizationType.F16
        if qtype == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(tensor_name, data)
        else:
            writer.add_tensor(tensor_name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        types[tensor_name] = qtype.name
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"path": str(path), "quant": quant, "bytes": path.stat().st_size, "tensors": len(types),
            "tensor_types": sorted(set(types.values())), "vocabulary": vocabulary}


def _add_sentencepiece_vocab(writer: gguf.GGUFWriter, tokenizer: Any, vocab_size: int) -> str:
    processor = getattr(tokenizer, "processor", None)  # slmtrain.tokenizer.Tokenizer wraps a SentencePiece model
    if processor is None:
        return "none (only SentencePiece tokenizers are embedded; llama.cpp needs one to run the file)"
    if processor.vocab_size() != vocab_size:
        raise ConfigError("tokenizer", f"tokenizer has {processor.vocab_size()} pieces, the model {vocab_size} rows")
    pieces = range(processor.vocab_size())
    kinds = [gguf.TokenType.UNKNOWN if processor.is_unknown(i) else gguf.TokenType.CONTROL if processor.is_control(i)
             else gguf.TokenType.BYTE if processor.is_byte(i) else gguf.TokenType.UNUSED if processor.is_unused(i)
             else gguf.TokenType.NORMAL for i in pieces]
    writer.add_tokenizer_model("llama")
    writer.add_token_list([processor.id_to_piece(i) for i in pieces])
    writer.add_token_scores([processor.get_score(i) for i in pieces])
    writer.add_token_types(kinds)
    for add, token in ((writer.add_bos_token_id, processor.bos_id()), (writer.add_eos_token_id, processor.eos_id()),
                       (writer.add_unk_token_id, processor.unk_id()), (writer.add_pad_token_id, processor.pad_id())):
        if token >= 0:
            add(token)
    return "sentencepiece (llama)"


def read_gguf(path: str | Path) -> dict[str, tuple[tuple[int, ...], str, np.ndarray]]:
    """Tensor name -> (numpy-order shape, GGML type name, dequantised fp32 values), read back with GGUFReader."""
    reader = gguf.GGUFReader(str(path))
    out = {}
    for tensor in reader.tensors:
        shape = tuple(int(n) for n in reversed(tensor.shape))  # GGUF lists the fastest-varying dimension first
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(shape)
        out[tensor.name] = (shape, tensor.tensor_type.name, values.astype(np.float32))
    return out
