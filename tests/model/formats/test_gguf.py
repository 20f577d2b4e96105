"""GGUF export and import against the gguf package's own reader (llama.cpp itself: test_gguf_llamacpp.py)."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import torch

from slmtrain.artifacts import load_model
from slmtrain.config import ConfigError, UserError
from slmtrain.model.config import RopeScaling
from slmtrain.model.formats.gguf import (export_gguf, gguf_tensors, llama3_scaling, permute_for_gguf, read_gguf,
                                        unpermute_from_gguf)
from slmtrain.model.transformer import apply_rope, rope_cos_sin, rope_inverse_frequencies
from tests.eval.eval_helpers import save_byte_level_hf_tokenizer, tiny_model
from tests.model.formats.gguf_helpers import (CHAT_TEMPLATE, MOE_ARCHITECTURES, TRICKY_TEXT, byte_level_bpe_model_dir,
                                     sentencepiece_tokenizer)
from tests.output import diagnostics
from tests.paths import REPO_ROOT

ARCHITECTURES = {"llama": {}, "qwen2": {"qkv_bias": True}, "qwen3": {"qk_norm": True, "head_dim": 32}}


@pytest.fixture(scope="module")
def sentencepiece(tmp_path_factory):
    return sentencepiece_tokenizer(tmp_path_factory.mktemp("sp"))


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
        if c.qkv_bias:
            shapes |= {f"blk.{i}.attn_q.bias": (q,), f"blk.{i}.attn_k.bias": (kv,), f"blk.{i}.attn_v.bias": (kv,)}
        if c.qk_norm:
            shapes |= {f"blk.{i}.attn_q_norm.weight": (c.head_dim_,), f"blk.{i}.attn_k_norm.weight": (c.head_dim_,)}
    return shapes


@pytest.mark.parametrize("quant,matrix_type,tolerance", [("f32", "F32", 0.0), ("f16", "F16", 1e-4),
                                                         ("bf16", "BF16", 1e-3), ("q8_0", "Q8_0", 2e-3),
                                                         ("q5_1", "Q5_1", 1e-2), ("q4_0", "Q4_0", 3e-2)])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_gguf_reads_back_with_the_right_shapes_and_values(tmp_path, arch, quant, matrix_type, tolerance):
    model = tiny_model(tie_embeddings=False, **ARCHITECTURES[arch])
    summary = export_gguf(model, tmp_path / "m.gguf", quant)
    back = read_gguf(tmp_path / "m.gguf")
    assert summary["architecture"] == arch
    assert {name: shape for name, (shape, _, _) in back.items()} == expected_shapes(model)
    original = gguf_tensors(model)
    for name, (shape, kind, values) in back.items():
        assert kind == (matrix_type if len(shape) == 2 else "F32"), name
        assert np.abs(values - original[name].numpy()).max() <= tolerance, name
    assert summary["tensors"] == len(back)
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]  # the temporary name is gone


def test_tied_model_has_no_output_tensor_and_llama3_rope_gets_factors(tmp_path):
    scaling = RopeScaling(kind="llama3", factor=8.0, original_max_seq_len=64)
    model = tiny_model(rope_scaling=scaling)
    export_gguf(model, tmp_path / "m.gguf", "q8_0")
    back = read_gguf(tmp_path / "m.gguf")
    assert "output.weight" not in back
    shape, kind, factors = back["rope_freqs.weight"]
    assert shape == (model.config.head_dim_ // 2,) and kind == "F32"
    assert factors[0] == pytest.approx(1.0) and factors[-1] == pytest.approx(8.0)
    export_gguf(model, tmp_path / "f32.gguf", "f32")  # and back: the scaling recovered from the factors
    loaded = load_model(tmp_path / "f32.gguf").model
    assert loaded.config.rope_scaling == scaling
    ids = torch.arange(40)[None] % 250
    assert torch.allclose(loaded(ids), model(ids), atol=1e-5)


@pytest.mark.parametrize("factor,original,theta,head_dim", [(8.0, 8192, 500_000.0, 128),  # Llama 3.1 8B
                                                            (32.0, 8192, 500_000.0, 64)])  # Llama 3.2 1B
def test_llama3_rope_scaling_is_recovered_from_the_published_factors(factor, original, theta, head_dim):
    scaling = RopeScaling(kind="llama3", factor=factor, original_max_seq_len=original)
    base = rope_inverse_frequencies(head_dim, theta, RopeScaling())
    factors = (base / rope_inverse_frequencies(head_dim, theta, scaling)).numpy()  # float32, as files store them
    assert llama3_scaling(factors, head_dim, theta, "m.gguf") == scaling
    factors[-1] *= 0.9  # a long wavelength not divided by the factor: no Llama-3 scaling
    with pytest.raises(UserError, match="m.gguf: rope_freqs is not a Llama-3 RoPE scaling"):
        llama3_scaling(factors, head_dim, theta, "m.gguf")


@pytest.mark.parametrize("arch", MOE_ARCHITECTURES)
def test_an_moe_gguf_stacks_its_experts_and_imports_with_identical_logits(tmp_path, arch):
    model = tiny_model(**MOE_ARCHITECTURES[arch])
    c, moe = model.config, model.config.moe
    summary = export_gguf(model, tmp_path / "q.gguf", "q8_0")
    assert summary["architecture"] == arch
    back = {name: (shape, kind) for name, (shape, kind, _) in read_gguf(tmp_path / "q.gguf").items()}
    width = c.expert_ffn_dim
    expected = {"ffn_gate_inp": ((moe.experts, c.d_model), "F32"),  # routers stay exact, as llama.cpp keeps them
                "ffn_gate_exps": ((moe.experts, width, c.d_model), "Q8_0"),
                "ffn_up_exps": ((moe.experts, width, c.d_model), "Q8_0"),
                "ffn_down_exps": ((moe.experts, c.d_model, width), "Q8_0")}
    if moe.shared_experts:
        expected |= {"ffn_gate_inp_shexp": ((c.d_model,), "F32"),
                     "ffn_gate_shexp": ((c.shared_ffn_dim, c.d_model), "Q8_0"),
                     "ffn_up_shexp": ((c.shared_ffn_dim, c.d_model), "Q8_0"),
                     "ffn_down_shexp": ((c.d_model, c.shared_ffn_dim), "Q8_0")}
    for i in range(c.n_layer):
        assert {name: back[f"blk.{i}.{name}.weight"] for name in expected} == expected
        assert f"blk.{i}.ffn_gate.weight" not in back
    assert ("output.weight" in back) == (arch != "llama")  # llama.cpp's olmoe and qwen2moe need it, tied or not
    export_gguf(model, tmp_path / "m.gguf", "f32")
    loaded = load_model(tmp_path / "m.gguf").model
    assert loaded.config.moe == moe and len(loaded.moe_layers()) == c.n_layer
    ids = torch.tensor([[5, 80, 200, 7, 9, 100, 31, 64, 150, 2, 222, 18]])
    assert torch.equal(loaded(ids), model(ids))


def test_permuted_q_k_give_the_same_attention_scores_with_interleaved_rope():
    """llama.cpp rotates adjacent pairs (2i, 2i+1) for ``llama``; slmtrain rotates halves (i, i+d/2). After the
    permutation the query-key scores must be identical, and the import undoes it exactly."""
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
    assert torch.equal(unpermute_from_gguf(permute_for_gguf(wq, heads), heads), wq)
    bias = torch.randn(heads * head_dim)
    assert torch.equal(unpermute_from_gguf(permute_for_gguf(bias, heads), heads), bias)


@pytest.mark.parametrize("overrides,quant,message", [
    ({"ffn": "geglu"}, "f16", "needs ffn=swiglu"),
    ({"qkv_bias": True, "head_dim": 32}, "f16", "n_head \\* head_dim == d_model"),
    ({"qk_norm": True, "rope_scaling": RopeScaling(kind="llama3", factor=8.0)}, "f16", "no Llama-3 RoPE scaling"),
    ({"qk_norm": True, "qkv_bias": True}, "f16", "qk_norm together with qkv_bias"),
    ({}, "q4_K", "cannot quantise K-quants"),
    ({}, "q3_k_s", "quant"),
    ({"moe": {"experts": 4, "score": "sigmoid"}}, "f16", "moe.score=sigmoid"),
    ({"moe": {"experts": 4, "loss_free_bias": True}}, "f16", "moe.loss_free_bias"),
    ({"moe": {"experts": 4, "shared_experts": 1}}, "f16", "without moe.shared_gate"),
    ({**MOE_ARCHITECTURES["olmoe"], "moe": {"experts": 4}}, "f16", "^moe.renormalize: .* olmoe"),
    ({**MOE_ARCHITECTURES["qwen2moe"], "moe": {"experts": 4, "shared_experts": 1, "shared_gate": True}}, "f16",
     "^moe.renormalize: .* qwen2moe"),
    ({**MOE_ARCHITECTURES["qwen2moe"], "moe": {**MOE_ARCHITECTURES["qwen2moe"]["moe"], "dense_layers": 1}}, "f16",
     "^moe.dense_layers: .* qwen2moe .*no leading dense blocks"),
    ({**MOE_ARCHITECTURES["olmoe"], "n_kv_head": 2}, "f16", "^n_kv_head: .* olmoe"),
])
def test_what_llama_cpp_would_misread_is_refused_before_writing(tmp_path, overrides, quant, message):
    with pytest.raises(ConfigError, match=message) as error:
        export_gguf(tiny_model(**overrides), tmp_path / "m.gguf", quant)
    assert "\n" not in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_destination_is_one_clear_error_and_leaves_nothing(tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(UserError, match="cannot write .*m.gguf"):
        export_gguf(tiny_model(), tmp_path / "a_file" / "m.gguf")
    with pytest.raises(UserError, match="cannot write"):
        export_gguf(tiny_model(), "/proc/m.gguf")
    assert [p.name for p in tmp_path.iterdir()] == ["a_file"]


def fields(path) -> dict:
    reader = gguf.GGUFReader(str(path))
    return {name: field.contents() for name, field in reader.fields.items()}


def test_a_sentencepiece_vocabulary_starts_documents_with_the_token_the_model_was_trained_with(tmp_path,
                                                                                              sentencepiece):
    summary = export_gguf(tiny_model(vocab_size=512), tmp_path / "m.gguf", "f16", sentencepiece)
    assert summary["vocabulary"] == "sentencepiece (llama)"
    meta = fields(tmp_path / "m.gguf")
    processor = sentencepiece.processor
    assert meta["tokenizer.ggml.model"] == "llama"
    assert meta["tokenizer.ggml.tokens"] == [processor.id_to_piece(i) for i in range(512)]
    assert meta["tokenizer.ggml.token_type"][processor.unk_id()] == gguf.TokenType.UNKNOWN
    assert meta["tokenizer.ggml.token_type"][processor.piece_to_id("<0x41>")] == gguf.TokenType.BYTE
    # slmtrain models see EOS before every document: that, not SentencePiece's <s>, is their document start
    assert meta["tokenizer.ggml.bos_token_id"] == meta["tokenizer.ggml.eos_token_id"] == processor.eos_id()
    assert meta["tokenizer.ggml.add_bos_token"] is True
    assert meta["tokenizer.ggml.add_space_prefix"] is True
    assert meta["tokenizer.ggml.padding_token_id"] == processor.pad_id()


@pytest.mark.parametrize("pre", ["gpt-2", "smollm", "llama-bpe", "qwen2"])
def test_a_byte_level_bpe_is_embedded_with_its_pre_tokenizer_merges_specials_and_chat_template(tmp_path, pre):
    loaded = load_model(byte_level_bpe_model_dir(tmp_path / "hf", pre))
    summary = export_gguf(loaded.model, tmp_path / "m.gguf", "f16", loaded.tokenizer)
    assert summary["vocabulary"] == f"byte-level BPE (gpt2, pre-tokenizer {pre})"
    meta = fields(tmp_path / "m.gguf")
    inner = loaded.tokenizer.inner
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == pre
    assert meta["tokenizer.ggml.tokens"] == inner.convert_ids_to_tokens(list(range(len(inner))))
    merges = json.loads(inner.backend_tokenizer.to_str())["model"]["merges"]
    assert meta["tokenizer.ggml.merges"] == [" ".join(pair) for pair in merges] and len(merges) > 100
    im_start = inner.convert_tokens_to_ids("<|im_start|>")
    assert meta["tokenizer.ggml.token_type"][im_start] == gguf.TokenType.CONTROL
    assert meta["tokenizer.ggml.bos_token_id"] == im_start
    assert meta["tokenizer.ggml.eos_token_id"] == inner.convert_tokens_to_ids("<|im_end|>")
    assert meta["tokenizer.ggml.add_bos_token"] is False  # the Hugging Face tokenizer prepends nothing
    assert meta["tokenizer.chat_template"] == CHAT_TEMPLATE


def test_tokenizers_llama_cpp_cannot_represent_are_named(tmp_path):
    hf = tmp_path / "hf"
    model = tiny_model()
    from slmtrain.model.formats.hf import export_hf

    export_hf(model, hf, bos_id=256, eos_id=257)
    save_byte_level_hf_tokenizer(hf)  # byte-level BPE that never splits words: no llama.cpp pre-tokenizer does that
    with pytest.raises(ConfigError, match="pre-tokenizer .* no llama.cpp equivalent"):
        export_gguf(model, tmp_path / "m.gguf", "f16", load_model(hf).tokenizer)
    with pytest.raises(ConfigError, match="ByteTokenizer cannot be embedded"):
        from tests.eval.eval_helpers import ByteTokenizer

        export_gguf(model, tmp_path / "m.gguf", "f16", ByteTokenizer())
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_load_model_imports_a_gguf_it_wrote(tmp_path, arch, sentencepiece):
    model = tiny_model(vocab_size=512, tie_embeddings=arch == "qwen2", **ARCHITECTURES[arch])
    export_gguf(model, tmp_path / "m.gguf", "f32", sentencepiece)
    loaded = load_model(tmp_path / "m.gguf")
    assert loaded.model.config == model.config
    ids = torch.tensor([sentencepiece.encode(TRICKY_TEXT)[:64]])
    assert torch.equal(loaded.model(ids), model(ids))
    assert loaded.tokenizer.encode(TRICKY_TEXT) == sentencepiece.encode(TRICKY_TEXT)
    assert loaded.tokenizer.bos_id == sentencepiece.bos_id
    again = export_gguf(loaded.model, tmp_path / "again.gguf", "f32", loaded.tokenizer)  # the vocabulary carries over
    assert again["vocabulary"] == "llama vocabulary of the imported GGUF"
    assert fields(tmp_path / "again.gguf")["tokenizer.ggml.tokens"] == fields(tmp_path / "m.gguf")["tokenizer.ggml.tokens"]


def test_a_quantised_bpe_gguf_imports_close_to_the_model_and_tokenizes_like_it(tmp_path):
    loaded = load_model(byte_level_bpe_model_dir(tmp_path / "hf", "qwen2", qkv_bias=True))
    export_gguf(loaded.model, tmp_path / "m.gguf", "q8_0", loaded.tokenizer)
    imported = load_model(tmp_path / "m.gguf")
    ids = torch.tensor([loaded.tokenizer.encode(TRICKY_TEXT)])
    assert imported.tokenizer.encode(TRICKY_TEXT) == ids[0].tolist()
    assert (imported.model(ids) - loaded.model(ids)).abs().max() < 2e-2
    assert imported.model(ids).argmax(-1).tolist() == loaded.model(ids).argmax(-1).tolist()


def write_gguf(path, arch: str) -> None:
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


class WordPieceVocabulary:
    """What an imported GGUF's tokenizer carries, here claiming a WordPiece (BERT) vocabulary."""

    gguf_metadata = {"tokenizer.ggml.model": ("bert", gguf.GGUFValueType.STRING, None)}


def test_bad_gguf_files_are_one_clear_error_each(tmp_path):
    export_gguf(tiny_model(), tmp_path / "m.gguf", "f16")
    export_gguf(tiny_model(), tmp_path / "bert-vocab.gguf", "f16", WordPieceVocabulary())
    data = (tmp_path / "m.gguf").read_bytes()
    (tmp_path / "truncated.gguf").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.gguf").write_bytes(b"")
    write_gguf(tmp_path / "gpt2.gguf", arch="gpt2")
    write_gguf(tmp_path / "no-metadata.gguf", arch="llama")
    cases = {"truncated.gguf": "not a readable GGUF file", "empty.gguf": "not a readable GGUF file",
             "gpt2.gguf": "unsupported architecture 'gpt2'", "no-metadata.gguf": "metadata llama.attention.head_count",
             "bert-vocab.gguf": "unsupported tokenizer model 'bert'", "missing.gguf": "not found"}
    for name, message in cases.items():
        with pytest.raises(UserError, match=message):
            load_model(tmp_path / name)


def test_export_gguf_to_an_unwritable_path_is_one_line(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    repo = REPO_ROOT
    run = subprocess.run([sys.executable, str(repo / "launch" / "export_gguf.py"), "model=tiny", "out=/proc/m.gguf"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert diagnostics(run.stderr).strip().count("\n") == 0 and "cannot write /proc/m.gguf" in diagnostics(run.stderr)
