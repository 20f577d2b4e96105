"""The transformer: attention backends agree, document masking isolates documents, the KV cache and generate()
equal full recomputation, sampling respects its filters, init follows the config, RoPE scaling matches
transformers, and torch.compile changes nothing."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import transformers
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from slmtrain.model import presets
from slmtrain.model.attention import attend
from slmtrain.model.config import RopeScaling
from slmtrain.model.transformer import KVCache, Transformer, rope_inverse_frequencies, sample_next

TOL = dict(atol=1e-5, rtol=1e-5)
LLAMA3_SHORT = dict(kind="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_seq_len=16)


def tiny_model(seed: int = 0, **overrides: Any) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(presets.get("tiny", **overrides)).eval()


def random_qkv(t: int, s: int, heads: int = 4, kv_heads: int = 2) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(t * 100 + s)
    q = torch.randn(2, heads, t, 16, generator=generator)
    k = torch.randn(2, kv_heads, s, 16, generator=generator)
    v = torch.randn(2, kv_heads, s, 16, generator=generator)
    return q, k, v


def packed_doc_ids(lengths_per_row: list[list[int]]) -> torch.Tensor:
    return torch.stack([torch.repeat_interleave(torch.arange(len(row)), torch.tensor(row)) for row in lengths_per_row])


# ------------------------------------------------------------------------------------------------------ attention
@pytest.mark.parametrize(("t", "s", "kv_heads"), [(8, 8, 4), (8, 8, 2), (8, 8, 1), (5, 12, 2), (1, 9, 2)])
def test_backends_agree(t: int, s: int, kv_heads: int) -> None:
    q, k, v = random_qkv(t, s, kv_heads=kv_heads)
    reference = attend(q, k, v, backend="eager")
    torch.testing.assert_close(attend(q, k, v, backend="sdpa"), reference, **TOL)
    torch.testing.assert_close(attend(q, k, v, backend="flash"), reference, **TOL)  # CPU: falls back to SDPA


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("t", "s"), [(8, 8), (5, 12), (1, 9)])
def test_half_precision_attention_equals_fp32_rounded(dtype: torch.dtype, t: int, s: int) -> None:
    """Half-precision inputs (attended in fp32 on CPU) give the fp32 result to within one rounding of the half type."""
    q, k, v = (x.to(dtype) for x in random_qkv(t, s))
    out = attend(q, k, v, backend="sdpa")
    assert out.dtype == dtype
    reference = attend(q.float(), k.float(), v.float(), backend="eager")
    torch.testing.assert_close(out.float(), reference, atol=1e-6, rtol=torch.finfo(dtype).eps)


def test_eager_is_causal_attention_by_definition() -> None:
    """The reference itself, against a loop over queries: softmax over keys up to the query's own position."""
    q, k, v = random_qkv(4, 6, kv_heads=4)
    out = attend(q, k, v, backend="eager")
    for i in range(4):
        visible = 6 - 4 + i + 1
        weights = (q[:, :, i : i + 1] @ k[:, :, :visible].transpose(-1, -2) / 4.0).softmax(-1)
        torch.testing.assert_close(out[:, :, i : i + 1], weights @ v[:, :, :visible], **TOL)


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_document_masking_agrees_across_backends(kv_heads: int) -> None:
    q, k, v = random_qkv(10, 10, kv_heads=kv_heads)
    doc_ids = packed_doc_ids([[3, 4, 3], [10]])
    eager = attend(q, k, v, backend="eager", doc_ids=doc_ids)
    torch.testing.assert_close(attend(q, k, v, backend="sdpa", doc_ids=doc_ids), eager, **TOL)
    torch.testing.assert_close(attend(q, k, v, backend="flash", doc_ids=doc_ids), eager, **TOL)
    # The row holding one document is plain causal attention; the packed row is not.
    plain = attend(q, k, v, backend="eager")
    torch.testing.assert_close(eager[1], plain[1], **TOL)
    assert not torch.allclose(eager[0, :, 3:], plain[0, :, 3:], atol=1e-3)


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_document_masking_equals_running_each_document_alone(backend: str) -> None:
    # RoPE is relative, so a document packed at offset 7 gives the same logits as the document at offset 0.
    model = tiny_model(attention_backend=backend)
    lengths = [7, 5, 4]
    ids = torch.randint(0, 256, (1, sum(lengths)), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        packed = model(ids, doc_ids=packed_doc_ids([lengths]))
        alone = torch.cat([model(doc) for doc in ids.split(lengths, dim=1)], dim=1)
        unmasked = model(ids)
    torch.testing.assert_close(packed, alone, **TOL)
    assert not torch.allclose(unmasked[:, 7:], alone[:, 7:], atol=1e-3)  # the mask did something


def test_model_backends_agree() -> None:
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = {b: tiny_model(attention_backend=b)(ids) for b in ("sdpa", "flash", "eager")}
    torch.testing.assert_close(logits["sdpa"], logits["eager"], **TOL)
    torch.testing.assert_close(logits["flash"], logits["eager"], **TOL)


def test_document_masking_with_a_cache_is_refused() -> None:
    model = tiny_model()
    cache = KVCache(model.config, 1, 8, torch.device("cpu"), torch.float32)
    model(torch.tensor([[1, 2, 3]]), cache=cache)
    with pytest.raises(ValueError, match="document and branch masking need ids for every key position"):
        model(torch.tensor([[4]]), cache=cache, doc_ids=torch.tensor([[0]]))


# ---------------------------------------------------------------------------------------------- KV cache, generate
@pytest.mark.parametrize(
    "overrides",
    [{}, dict(n_kv_head=1), dict(rope_theta=500000.0, rope_scaling=LLAMA3_SHORT), dict(qk_norm=True, qkv_bias=True)],
    ids=["gqa", "mqa", "llama3_rope", "qk_norm_bias"],
)
@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_kv_cache_equals_full_recompute(overrides: dict[str, Any], chunk: int) -> None:
    model = tiny_model(**overrides)
    ids = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(3))
    cache = KVCache(model.config, 2, 20, torch.device("cpu"), torch.float32)
    with torch.no_grad():
        full = model(ids)
        incremental = torch.cat([model(part, cache=cache) for part in ids.split(chunk, dim=1)], dim=1)
    assert cache.length == 20
    torch.testing.assert_close(incremental, full, **TOL)


@pytest.mark.parametrize("overrides", [{}, dict(n_kv_head=1), dict(position="learned")], ids=["gqa", "mqa", "learned"])
def test_ragged_cache_decodes_rows_of_different_lengths_as_each_alone(overrides: dict[str, Any]) -> None:
    """A server's batch: rows of 6, 11 and 3 tokens (read alone, then copied into rows of a ragged cache with room
    for 4) advance one token per pass together; each row's logits are those of its own sequence recomputed whole."""
    model = tiny_model(**overrides)
    rows = [torch.randint(0, 256, (n + 5,), generator=torch.Generator().manual_seed(n)) for n in (6, 11, 3)]
    cache = KVCache(model.config, 4, 32, torch.device("cpu"), torch.float32, ragged=True)
    with torch.no_grad():
        for row, ids in enumerate(rows):
            own = KVCache(model.config, 1, 32, torch.device("cpu"), torch.float32)
            model(ids[None, :-5], cache=own)
            cache.copy_row(row, own)
        cache.used_rows = 3
        for step in range(5):
            tokens = torch.stack([ids[len(ids) - 5 + step] for ids in rows])[:, None]
            batched = model(tokens, cache=cache)[:, -1]
            for row, ids in enumerate(rows):
                alone = model(ids[None, : len(ids) - 4 + step])[0, -1]
                torch.testing.assert_close(batched[row], alone, **TOL)
    assert cache.row_lengths.tolist() == [11, 16, 8, 0]  # the unused row took no part


def read_alone(model: Transformer, ids: torch.Tensor, max_len: int = 32) -> KVCache:
    """A one-row cache holding ``ids`` (1-D), as a server reads a prompt before the prompt joins the batch."""
    own = KVCache(model.config, 1, max_len, torch.device("cpu"), torch.float32)
    model(ids[None], cache=own)
    return own


def decode_rows(model: Transformer, cache: KVCache, tokens: list[int]) -> torch.Tensor:
    """One token more for each of the first len(tokens) rows of a ragged cache: their last logits, (rows, V)."""
    cache.used_rows = len(tokens)
    return model(torch.tensor(tokens)[:, None], cache=cache)[:, -1]


def test_a_copied_row_decodes_as_its_source() -> None:
    """copy_row from a plain one-row cache and from another ragged row: the copy's next logits are the source's own
    (its sequence recomputed whole), and its length is the source's."""
    model = tiny_model()
    ids = torch.randint(0, 256, (9,), generator=torch.Generator().manual_seed(1))
    other = torch.randint(0, 256, (4,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(ids[None])[0, -1]
        cache = KVCache(model.config, 3, 16, torch.device("cpu"), torch.float32, ragged=True)
        cache.copy_row(0, read_alone(model, other))
        cache.copy_row(1, read_alone(model, ids[:-1]))
        cache.copy_row(2, cache, 1)
        assert cache.row_lengths.tolist() == [4, 8, 8]
        logits = decode_rows(model, cache, [0, int(ids[-1]), int(ids[-1])])
        other_expected = model(torch.cat([other, torch.tensor([0])])[None])[0, -1]
    torch.testing.assert_close(logits[1], expected, **TOL)
    torch.testing.assert_close(logits[2], expected, **TOL)
    torch.testing.assert_close(logits[0], other_expected, **TOL)


def test_a_moved_row_keeps_its_length_and_entries_and_its_old_row_is_empty() -> None:
    model = tiny_model()
    rows = [torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(n)) for n in (5, 7, 3)]
    with torch.no_grad():
        cache = KVCache(model.config, 3, 16, torch.device("cpu"), torch.float32, ragged=True)
        for row, ids in enumerate(rows):
            cache.copy_row(row, read_alone(model, ids[:-1]))
        keys, values = cache.keys[:, 2, :, :2].clone(), cache.values[:, 2, :, :2].clone()
        cache.move_row(2, 0)  # row 0 left the batch; the last row takes its place
        assert cache.row_lengths.tolist() == [2, 6, 0]
        assert torch.equal(cache.keys[:, 0, :, :2], keys) and torch.equal(cache.values[:, 0, :, :2], values)
        logits = decode_rows(model, cache, [int(rows[2][-1]), int(rows[1][-1])])
        torch.testing.assert_close(logits[0], model(rows[2][None])[0, -1], **TOL)
        torch.testing.assert_close(logits[1], model(rows[1][None])[0, -1], **TOL)
        cache.clear_row(1)
    assert cache.row_lengths.tolist() == [3, 0, 0]
    with pytest.raises(ValueError, match="needs a ragged cache"):
        read_alone(model, rows[0]).clear_row(0)


def test_a_grown_cache_keeps_its_entries_and_decodes_on() -> None:
    """grow() reallocates with more positions: old entries and lengths stay, and rows decode past the old size as
    their sequences recomputed whole; a copy longer than the cache is refused, as is shrinking."""
    model = tiny_model()
    rows = [torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(n)) for n in (9, 5)]
    with torch.no_grad():
        cache = KVCache(model.config, 2, 8, torch.device("cpu"), torch.float32, ragged=True)
        for row, ids in enumerate(rows):
            cache.copy_row(row, read_alone(model, ids[:-1]))
        keys, values = cache.keys.clone(), cache.values.clone()
        with pytest.raises(ValueError, match="KV cache full: 9 positions needed, 8 allocated"):
            decode_rows(model, cache, [int(rows[0][-1]), int(rows[1][-1])])
        cache.grow(12)
        assert cache.max_len == 12 and cache.row_lengths.tolist() == [8, 4]
        assert torch.equal(cache.keys[:, :, :, :8], keys) and torch.equal(cache.values[:, :, :, :8], values)
        logits = decode_rows(model, cache, [int(rows[0][-1]), int(rows[1][-1])])
        for row, ids in enumerate(rows):
            torch.testing.assert_close(logits[row], model(ids[None])[0, -1], **TOL)
        with pytest.raises(ValueError, match="KV cache full: 13 positions needed, 12 allocated"):
            cache.copy_row(0, read_alone(model, torch.zeros(13, dtype=torch.long), max_len=13))
    with pytest.raises(ValueError, match="only grows"):
        cache.grow(4)


def test_kv_cache_overflow_is_an_error() -> None:
    model = tiny_model()
    cache = KVCache(model.config, 1, 4, torch.device("cpu"), torch.float32)
    with pytest.raises(ValueError, match="KV cache full: 6 positions needed, 4 allocated"):
        model(torch.zeros(1, 6, dtype=torch.long), cache=cache)


@pytest.mark.parametrize("overrides", [dict(), dict(rope_theta=500000.0, rope_scaling=LLAMA3_SHORT)])
def test_greedy_generate_equals_argmax_of_full_recompute(overrides: dict[str, Any]) -> None:
    model = tiny_model(**overrides)
    prompt = torch.randint(0, 256, (3, 5), generator=torch.Generator().manual_seed(4))
    out = model.generate(prompt, 12, temperature=0.0)
    assert out.shape == (3, 17)
    assert torch.equal(out[:, :5], prompt)
    with torch.no_grad():
        for step in range(5, 17):
            assert torch.equal(out[:, step], model(out[:, :step])[:, -1].argmax(-1)), f"step {step}"


@pytest.mark.parametrize(("top_k", "top_p"), [(3, None), (None, 0.5), (5, 0.6)])
def test_generate_samples_only_from_the_allowed_set(top_k: int | None, top_p: float | None) -> None:
    model = tiny_model()
    with torch.no_grad():  # a peaked distribution, so that top-p keeps only a few tokens
        model.lm_head.weight.mul_(30.0)
    prompt = torch.randint(0, 256, (4, 3), generator=torch.Generator().manual_seed(5))
    out = model.generate(prompt, 10, temperature=1.0, top_k=top_k, top_p=top_p,
                         generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        for step in range(3, 13):
            logits = model(out[:, :step])[:, -1]
            for row in range(4):
                assert out[row, step].item() in allowed_tokens(logits[row], top_k, top_p), f"row {row} step {step}"


def allowed_tokens(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> set[int]:
    """The reference filter, written out: the k best tokens, then the most probable tokens until p is reached."""
    order = logits.argsort(descending=True).tolist()
    if top_k is not None:
        order = order[:top_k]
    if top_p is None:
        return set(order)
    probs = logits[order].softmax(-1).tolist()
    kept, mass = [], 0.0
    for token, prob in zip(order, probs):
        kept.append(token)
        mass += prob
        if mass >= top_p - 1e-6:
            break
    return set(kept)


def test_sample_next_filters_exactly() -> None:
    probs = torch.tensor([0.05, 0.5, 0.15, 0.3])
    logits = probs.log().expand(4000, 4)
    generator = torch.Generator().manual_seed(7)
    assert set(sample_next(logits, 1.0, 2, None, generator).tolist()) == {1, 3}
    assert set(sample_next(logits, 1.0, None, 0.7, generator).tolist()) == {1, 3}  # 0.5 < 0.7 <= 0.8
    assert set(sample_next(logits, 1.0, None, 0.85, generator).tolist()) == {1, 3, 2}
    assert set(sample_next(logits, 1.0, None, 0.3, generator).tolist()) == {1}
    assert set(sample_next(logits, 1.0, None, None, generator).tolist()) == {0, 1, 2, 3}
    assert set(sample_next(logits, 0.0, None, None, generator).tolist()) == {1}
    drawn = sample_next(logits, 1.0, None, None, generator)
    torch.testing.assert_close(torch.bincount(drawn, minlength=4) / 4000, probs, atol=0.03, rtol=0)


def test_temperature_sampling_is_reproducible_with_a_generator() -> None:
    model = tiny_model()
    prompt = torch.randint(0, 256, (2, 4), generator=torch.Generator().manual_seed(8))
    first = model.generate(prompt, 16, temperature=1.5, generator=torch.Generator().manual_seed(123))
    again = model.generate(prompt, 16, temperature=1.5, generator=torch.Generator().manual_seed(123))
    other = model.generate(prompt, 16, temperature=1.5, generator=torch.Generator().manual_seed(124))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_eos_ends_a_row_and_generation_stops_when_all_rows_end() -> None:
    model = tiny_model()
    prompt = torch.randint(0, 256, (2, 4), generator=torch.Generator().manual_seed(9))
    greedy = model.generate(prompt, 10, temperature=0.0)
    eos = int(greedy[0, 4])  # row 0's first new token
    with_eos = model.generate(prompt, 10, temperature=0.0, eos_id=eos)
    assert with_eos.shape == greedy.shape  # row 1 is still running
    assert (with_eos[0, 4:] == eos).all()  # a finished row keeps emitting eos
    row1_end = next((i for i in range(4, 14) if greedy[1, i] == eos), 13)
    assert torch.equal(with_eos[1, : row1_end + 1], greedy[1, : row1_end + 1])
    # One row: generation stops right after the eos instead of running to max_new_tokens.
    single = model.generate(prompt[:1], 10, temperature=0.0, eos_id=eos)
    assert single.shape == (1, 5) and single[0, -1] == eos
    assert model.generate(prompt[:1], 10, temperature=0.0, eos_id=(eos + 1) % 256).shape[1] > 5


def test_max_seq_len_exceeded_is_a_clear_error() -> None:
    model = tiny_model()  # max_seq_len=128
    with pytest.raises(ValueError, match="sequence of 129 tokens exceeds max_seq_len=128"):
        model(torch.zeros(1, 129, dtype=torch.long))
    cache = KVCache(model.config, 1, 200, torch.device("cpu"), torch.float32)
    model(torch.zeros(1, 120, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="sequence of 130 tokens exceeds max_seq_len=128"):
        model(torch.zeros(1, 10, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="exceeds max_seq_len=128"):
        model.generate(torch.zeros(1, 130, dtype=torch.long), 5)


def test_out_of_range_token_ids_are_a_clear_error() -> None:
    model = tiny_model()
    with pytest.raises(ValueError, match=r"token id out of range: ids span \[0, 256\] but vocab_size=256"):
        model.check_token_ids(torch.tensor([[0, 256]]))
    with pytest.raises(ValueError, match=r"ids span \[-1, 3\]"):
        model.generate(torch.tensor([[3, -1]]), 2)
    model.check_token_ids(torch.tensor([[0, 255]]))


# ------------------------------------------------------------------------------------------------------------ init
@pytest.mark.parametrize(("init_std", "scaled"), [(0.02, True), (0.05, False)])
def test_init_follows_the_config(init_std: float, scaled: bool) -> None:
    torch.manual_seed(10)
    config = presets.get("demo-5m", n_layer=4, init_std=init_std, scaled_residual_init=scaled, qkv_bias=True)
    model = Transformer(config)
    residual_std = init_std / (2 * config.n_layer) ** 0.5 if scaled else init_std
    for name, param in model.named_parameters():
        if name.endswith(("attn.out.weight", "mlp.down.weight")):
            assert param.std().item() == pytest.approx(residual_std, rel=0.05), name
        elif name.endswith("bias"):
            assert (param == 0).all(), name
        elif "norm" in name:
            assert (param == 1).all(), name
        else:
            assert param.std().item() == pytest.approx(init_std, rel=0.05), name
            assert param.mean().abs().item() < init_std / 20, name


def test_init_weights_materialises_a_meta_model() -> None:
    config = presets.get("tiny")
    with torch.device("meta"):
        model = Transformer(config)
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    model.init_weights()
    torch.manual_seed(0)
    direct = Transformer(config)
    torch.testing.assert_close(model.inv_freq, direct.inv_freq)
    assert model.embed.weight.std().item() == pytest.approx(0.02, rel=0.1)
    ids = torch.randint(0, 256, (1, 8))
    assert torch.isfinite(model(ids)).all()


# ------------------------------------------------------------------------------------------------------- compile
def test_torch_compile_gives_the_same_logits_and_gradients() -> None:
    """fullgraph=True: the whole model traces without graph breaks. The aot_eager backend runs dynamo and AOT
    autograd (the parts that can change semantics) without inductor's C++ build, which costs ~45 s on 2 cores; the
    inductor path is exercised by bench/train_step.py compile=true."""
    model = tiny_model(n_layer=1).train()
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(11))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    eager_logits = model(ids)
    eager_logits.square().mean().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled_logits = compiled(ids)
    compiled_logits.square().mean().backward()
    torch.testing.assert_close(compiled_logits, eager_logits, **TOL)
    for eager_grad, param in zip(eager_grads, model.parameters()):
        torch.testing.assert_close(param.grad, eager_grad, **TOL)


# ---------------------------------------------------------------------------------------------------------- RoPE
def hf_rope_config(head_dim: int, theta: float, rope_parameters: dict[str, Any]) -> transformers.LlamaConfig:
    return transformers.LlamaConfig(hidden_size=head_dim * 2, num_attention_heads=2, head_dim=head_dim,
                                    max_position_embeddings=131072,
                                    rope_parameters={"rope_theta": theta, **rope_parameters})


@pytest.mark.parametrize(
    ("head_dim", "theta", "scaling"),
    [
        (64, 10000.0, RopeScaling(kind="linear", factor=4.0)),
        (128, 500000.0, RopeScaling(kind="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                    original_max_seq_len=8192)),
        (16, 10000.0, RopeScaling(kind="llama3", factor=8.0, low_freq_factor=2.0, high_freq_factor=8.0,
                                  original_max_seq_len=64)),
    ],
)
def test_rope_scaling_matches_transformers(head_dim: int, theta: float, scaling: RopeScaling) -> None:
    parameters: dict[str, Any] = {"rope_type": scaling.kind, "factor": scaling.factor}
    if scaling.kind == "llama3":
        parameters.update(low_freq_factor=scaling.low_freq_factor, high_freq_factor=scaling.high_freq_factor,
                          original_max_position_embeddings=scaling.original_max_seq_len)
    expected, attention_factor = ROPE_INIT_FUNCTIONS[scaling.kind](hf_rope_config(head_dim, theta, parameters), "cpu")
    assert attention_factor == 1.0
    ours = rope_inverse_frequencies(head_dim, theta, scaling)
    torch.testing.assert_close(ours, expected.float(), atol=0, rtol=1e-6)
    unscaled = rope_inverse_frequencies(head_dim, theta, RopeScaling())
    assert not torch.allclose(ours, unscaled)  # the scaling changed something


def test_unscaled_rope_matches_transformers() -> None:
    config = hf_rope_config(64, 100000.0, {"rope_type": "default"})
    expected = LlamaRotaryEmbedding(config).inv_freq
    torch.testing.assert_close(rope_inverse_frequencies(64, 100000.0, RopeScaling()), expected, atol=0, rtol=1e-6)


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_a_packed_tree_gives_each_branch_the_logits_it_has_alone(backend) -> None:
    """Two documents in one row, the first a prefix with two branches: each branch's logits equal the prefix and
    that branch run alone, its positions restarting where the prefix ends."""
    from slmtrain.model.transformer import Packing

    model = tiny_model(attention_backend=backend)
    prefix, first, second, other = [5, 6, 7], [8, 9], [10, 11, 12], [13, 14, 15, 16]
    ids = torch.tensor([prefix + first + second + other])
    packing = Packing(doc_ids=torch.tensor([[0] * 8 + [1] * 4]),
                      branch_ids=torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, 0, 0, 0, 0]]),
                      positions=torch.tensor([[0, 1, 2, 3, 4, 3, 4, 5, 0, 1, 2, 3]]))
    with torch.no_grad():
        packed = model.logits(model.hidden_states(ids, packing=packing))[0]
        alone = [model(torch.tensor([seq]))[0] for seq in (prefix + first, prefix + second, other)]
    torch.testing.assert_close(packed[:5], alone[0], **TOL)
    torch.testing.assert_close(packed[5:8], alone[1][3:], **TOL)
    torch.testing.assert_close(packed[8:], alone[2], **TOL)
