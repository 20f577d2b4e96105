"""Speculative decoding: greedy output is the target's own, sampled output follows the target's distribution."""

from __future__ import annotations

import itertools

import pytest
import torch
from scipy.stats import chisquare

from slmtrain.collab import speculative_generate
from slmtrain.model import presets
from slmtrain.model.transformer import Transformer


def model(seed: int, vocab: int, sharpness: float = 1.0, **overrides) -> Transformer:
    """A random tiny model; ``sharpness`` scales the output layer so that its distributions are far from uniform."""
    torch.manual_seed(seed)
    shape = {"d_model": 32, "n_head": 2, "n_kv_head": 1, "ffn_hidden": 64} | overrides
    net = Transformer(presets.get("tiny", vocab_size=vocab, tie_embeddings=False, **shape)).eval()
    with torch.no_grad():
        net.lm_head.weight.mul_(sharpness)
    return net


@pytest.mark.parametrize("k", [1, 3, 4, 8])
def test_greedy_output_is_token_identical_to_the_targets(k):
    target, draft = model(0, 64, sharpness=30), model(1, 64, sharpness=30, n_layer=1)
    for seed in range(2):
        prompt = torch.randint(0, 64, (1, 6), generator=torch.Generator().manual_seed(seed))
        expected = target.generate(prompt, 24, temperature=0)
        result = speculative_generate(draft, target, prompt, 24, k=k)
        assert torch.equal(result.tokens, expected)
        assert 0 <= result.accepted <= result.drafted and result.target_calls <= 24


def test_a_draft_equal_to_the_target_is_always_accepted_and_calls_it_once_per_k_plus_one():
    target = model(0, 64, sharpness=30)
    prompt = torch.tensor([[1, 2, 3]])
    result = speculative_generate(target, target, prompt, 20, k=4)
    assert result.acceptance_rate == 1.0 and result.target_calls == 4  # 5 + 5 + 5 + 5 new tokens
    assert torch.equal(result.tokens, target.generate(prompt, 20, temperature=0))


def test_stops_where_generate_stops_at_eos_and_the_context_end():
    target, draft = model(0, 64, sharpness=30, max_seq_len=32), model(1, 64, sharpness=30, max_seq_len=32)
    prompt = torch.tensor([[5, 9]])
    free = target.generate(prompt, 20, temperature=0)[0, 2:].tolist()
    eos = free[7]
    assert torch.equal(speculative_generate(draft, target, prompt, 20, k=4, eos_id=eos).tokens,
                       target.generate(prompt, 20, temperature=0, eos_id=eos))
    assert speculative_generate(draft, target, prompt, 100, k=4).tokens.shape == (1, 32)


def test_sampling_follows_the_target_distribution():
    """Three tokens over a 4-token vocabulary: the empirical joint law of 1,200 speculative samples matches the
    target's exact law (chi-square), while the draft's own law is far from it (the test would see a wrong rule)."""
    vocab, new, runs = 4, 3, 1200
    target, draft = model(0, vocab, sharpness=60), model(5, vocab, sharpness=60, n_layer=1)
    prompt = torch.tensor([[0, 1]])

    @torch.no_grad()
    def exact_law(net: Transformer) -> dict[tuple[int, ...], float]:
        law = {}
        for tail in itertools.product(range(vocab), repeat=new):
            probs = net(torch.tensor([[0, 1, *tail[:-1]]]))[0, -new:].softmax(-1)
            law[tail] = float(torch.prod(probs[torch.arange(new), torch.tensor(tail)]))
        return law

    generator = torch.Generator().manual_seed(0)
    counts = dict.fromkeys(itertools.product(range(vocab), repeat=new), 0)
    accepted = drafted = 0
    for _ in range(runs):
        result = speculative_generate(draft, target, prompt, new, k=2, temperature=1.0, generator=generator)
        counts[tuple(result.tokens[0, 2:].tolist())] += 1
        accepted, drafted = accepted + result.accepted, drafted + result.drafted
    target_law, draft_law = exact_law(target), exact_law(draft)
    assert sum(target_law.values()) == pytest.approx(1.0, abs=1e-5)
    common = [c for c in counts if runs * target_law[c] >= 5]  # rarer outcomes pooled: chi-square needs counts
    rare = [c for c in counts if c not in common]

    def expected(law: dict[tuple[int, ...], float]) -> list[float]:
        return [runs * law[c] for c in common] + [runs * sum(law[c] for c in rare)]

    observed = [counts[c] for c in common] + [sum(counts[c] for c in rare)]
    assert chisquare(observed, expected(target_law), sum_check=False).pvalue > 1e-3
    assert chisquare(observed, expected(draft_law), sum_check=False).pvalue < 1e-6
    assert 0 < accepted < drafted  # both branches of the rejection rule ran
