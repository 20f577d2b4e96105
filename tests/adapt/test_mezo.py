"""MeZO: its projected gradient is the directional derivative, its estimates average to the true gradient, and a
step changes the weights by the update alone, bit for bit. (Its validation loss falls in test_methods.py, its
peak memory is compared with inference in test_planner.py.)"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from slmtrain.adapt.mezo import MezoOptions, ZerothOrder, add_noise_, parameter_seed
from slmtrain.model import presets
from slmtrain.model.transformer import Transformer


def micro_model() -> Transformer:
    """About 900 parameters, float64, tied embeddings: small enough for thousands of perturbations."""
    torch.manual_seed(0)
    config = presets.get("tiny", vocab_size=32, d_model=8, n_head=2, n_kv_head=1, ffn_hidden=16, n_layer=1,
                         max_seq_len=16)
    return Transformer(config).double()


def loss_function(model):
    tokens = torch.randint(0, 32, (2, 13), generator=torch.Generator().manual_seed(1))
    return lambda: F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())


def direction(zo: ZerothOrder, seed: int) -> list[torch.Tensor]:
    zs = [torch.zeros_like(p) for p in zo.parameters]
    for i, z in enumerate(zs):
        add_noise_(z, parameter_seed(seed, i), 1.0)
    return zs


def test_estimates_are_directional_derivatives_and_average_to_the_gradient():
    model = micro_model()
    loss_of = loss_function(model)
    loss_of().backward()
    gradient = torch.cat([p.grad.flatten() for p in dict.fromkeys(model.parameters())])
    zo = ZerothOrder(model, MezoOptions(epsilon=1e-5), lr=0.0, seed=0)
    estimate = torch.zeros_like(gradient)
    samples = 2000
    for seed in range(samples):
        z = torch.cat([t.flatten() for t in direction(zo, seed)])
        projected, _ = zo.projected_gradient(loss_of, seed)
        assert abs(projected - float(z @ gradient)) < 1e-6 * (1 + abs(projected))
        estimate += projected * z / samples
    cosine = float(F.cosine_similarity(estimate, gradient, dim=0))
    assert cosine > 0.75  # sqrt(n / (n + d)) = 0.83 expected for n = 2000 draws, d = 900 parameters
    unrelated = torch.cat([t.flatten() for t in direction(zo, samples + 1)])
    assert abs(float(F.cosine_similarity(unrelated, gradient, dim=0))) < 0.2


def test_weights_change_by_the_update_alone_bit_for_bit():
    model = micro_model().float()
    loss_of = loss_function(model)
    zo = ZerothOrder(model, MezoOptions(epsilon=1e-3), lr=1e-2, seed=0)
    before = [p.detach().clone() for p in zo.parameters]
    assert model.lm_head.weight is model.embed.weight and len(zo.parameters) == len(list(model.parameters()))
    projected, _ = zo.projected_gradient(loss_of, seed=7)
    assert projected != 0
    assert all(torch.equal(p, b) for p, b in zip(zo.parameters, before))  # both perturbations undone exactly
    zo.update(7, projected, lr=1e-2)
    for i, (p, b) in enumerate(zip(zo.parameters, before)):
        expected = b.clone()
        add_noise_(expected, parameter_seed(7, i), -1e-2 * projected)
        assert torch.equal(p, expected)
    assert not torch.equal(zo.parameters[0], before[0])
    first = [p.detach().clone() for p in zo.parameters]
    zo.step(loss_of)  # a full step with a drawn seed moves every weight along one regenerated direction
    assert all(not torch.equal(p, f) for p, f in zip(zo.parameters, first))
