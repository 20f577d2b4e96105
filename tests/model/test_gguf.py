from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.eval.eval_helpers import tiny_model
from slmtrain.config import ConfigError
from slmtrain.model.formats.gguf import export_gguf, gguf_tensors, permute_for_gguf, read_gguf
from slmtrain.model.config import RopeScaling
from slmtrain.model.transformer import apply_rope, rope_cos_sin


def expected_shapes(model) -> dict[str, tuple[int, ...]]:
    c = model.config
    q, kv = c.n_head * c.head_dim_, c.kv_heads * c.head_dim_
    shapes = {"token_embd.weight": (c.vocab_size, c.d_model), "output_norm.weight": (c.d_model,)}
    if not c.tie_embeddings:
        shapes["output.weight"] = (c.vocab_size, c.d_model)
    for i in range(c.n_layer):
        shapes |= {f"blk.{i}.attn_norm.weight": (c.d_model,), f"blk.{i}.attn_q.weight": (q, c.d_model),
                   f"blk.{i}.attn_k.weight": (kv, c.d_model), f"blk.{i}.attn_v.weight": (kv, c.d_model),
                   f"blk.{i}.attn_output.weight": (c.d_model, q), f"blk.{i}.ffn_norm.weight": (c.d_model,),
                   f"blk.{i}.ffn_gate.weight": (c.ffn_dim, c.d_model), f"blk.{i}.ffn_up.weight": (c.ffn_dim, c.d_model),
                   f"blk.{i}.ffn_down.weight": (c.d_model, c.ffn_dim)}
    return shapes


@pytest.mark.parametrize("quant,matrix_type,tolerance", [("f16", "F16", 1e-4), ("q8_0", "Q8_0", 2e-3),
                                                         ("q4_0", "Q4_0", 3e-2)])
def test_gguf_reads_back_with_the_right_shapes_and_values(tmp_path, quant, matrix_type, tolerance):
    model = tiny_model(tie_embeddings=False)
    summary = export_gguf(model, tmp_path / "m.gguf", quant)
    back = read_gguf(tmp_path / "m.gguf")
    assert {name: shape for name, (shape, _, _) in back.items()} == expected_shapes(model)
    original = gguf_tensors(model)
    for name, (shape, kind, values) in back.items():
        assert kind == (matrix_type if len(shape) == 2 else "F32"), name
        assert np.abs(values - original[name].numpy()).max() < tolerance, name
    assert summary["tensors"] == len(back)


def test_tied_model_has_no_output_tensor_and_llama3_rope_gets_factors(tmp_path):
    scaling = RopeScaling(kind="llama3", factor=8.0, original_max_seq_len=64)
    model = tiny_model(rope_scaling=scaling)
    export_gguf(model, tmp_path / "m.gguf", "q8_0")
    back = read_gguf(tmp_path / "m.gguf")
    assert "output.weight" not in back
    shape, kind, factors = back["rope_freqs.weight"]
    assert shape == (model.config.head_dim_ // 2,) and kind == "F32"
    assert factors[0] == pytest.approx(1.0) and factors[-1] == pytest.approx(8.0)


def test_permuted_q_k_give_the_same_attention_scores_with_interleaved_rope():
    """llama.cpp rotates adjacent pairs (2i, 2i+1); slmtrain rotates halves (i, i+d/2). After the permutation the
    query-key scores must be identical."""
    torch.manual_seed(0)
    heads, head_dim, d_model, seq = 2, 8, 16, 5
    wq, wk = torch.randn(heads * head_dim, d_model), torch.randn(heads * head_dim, d_model)
    x = torch.randn(seq, d_model)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    cos, sin = rope_cos_sin(torch.arange(seq), inv_freq)

    def heads_of(w):
        return (x @ w.T).reshape(seq, heads, head_dim).transpose(0, 1)

    q, k = apply_rope(heads_of(wq), cos, sin), apply_rope(heads_of(wk), cos, sin)
    reference = q @ k.transpose(-1, -2)

    def interleaved_rope(t):
        angles = torch.arange(seq)[:, None].float() * inv_freq[None]
        even, odd = t[..., 0::2], t[..., 1::2]
        rotated = torch.stack((even * angles.cos() - odd * angles.sin(), even * angles.sin() + odd * angles.cos()), -1)
        return rotated.flatten(-2)

    q2 = interleaved_rope(heads_of(permute_for_gguf(wq, heads)))
    k2 = interleaved_rope(heads_of(permute_for_gguf(wk, heads)))
    assert torch.allclose(q2 @ k2.transpose(-1, -2), reference, atol=1e-4)


def test_architectures_llama_cpp_would_misread_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="llama architecture"):
        export_gguf(tiny_model(qkv_bias=True), tmp_path / "m.gguf")
    with pytest.raises(ConfigError, match="quant"):
        export_gguf(tiny_model(), tmp_path / "m.gguf", "q3_k")


def test_a_sentencepiece_vocabulary_is_embedded(tmp_path):
    import gguf
    import pydoc_data.topics
    import sentencepiece as spm

    from slmtrain.tokenizer import Tokenizer

    text = "\n".join(pydoc_data.topics.topics[k] for k in ("if", "while", "for", "try"))
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text.splitlines()), model_prefix=str(tmp_path / "sp"),
                                   vocab_size=400, model_type="bpe", byte_fallback=True, minloglevel=2)
    tokenizer = Tokenizer(tmp_path / "sp.model")
    summary = export_gguf(tiny_model(vocab_size=400), tmp_path / "m.gguf", "f16", tokenizer)
    assert summary["vocabulary"].startswith("sentencepiece")
    reader = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    tokens = reader.fields["tokenizer.ggml.tokens"]
    assert len(tokens.data) == 400
    assert [bytes(tokens.parts[i]).decode() for i in tokens.data[:3]] == [tokenizer.processor.id_to_piece(i)
                                                                         for i in range(3)]
    types = reader.fields["tokenizer.ggml.token_type"]
    assert int(types.parts[types.data[tokenizer.processor.unk_id()]][0]) == gguf.TokenType.UNKNOWN
