"""Closed forms of the Chinchilla law and the inference-aware (Sardana et al.) optimum, checked independently."""

from __future__ import annotations

import math

import numpy as np
import pytest

from slmtrain.config import ConfigError
from slmtrain.scaling import budget
from slmtrain.scaling.laws import PUBLISHED, ScalingLaw, law_from_options, load_law

CHINCHILLA = PUBLISHED["chinchilla"]


def brute_force_frontier(law: ScalingLaw, flops: float) -> float:
    """N minimising L(N, C / 6N) on a fine log grid."""
    n = np.exp(np.linspace(math.log(1e6), math.log(1e14), 400_001))
    return float(n[np.argmin(law.loss(n, flops / (6 * n)))])


@pytest.mark.parametrize("name", ["chinchilla", "chinchilla_unrounded", "epoch"])
@pytest.mark.parametrize("flops", [1e19, 5.76e23, 1e26])
def test_compute_optimal_closed_form(name: str, flops: float) -> None:
    law = PUBLISHED[name]
    g = (law.alpha * law.A / (law.beta * law.B)) ** (1 / (law.alpha + law.beta))
    a, b = law.beta / (law.alpha + law.beta), law.alpha / (law.alpha + law.beta)
    params, tokens = law.compute_optimal(flops)
    assert params == pytest.approx(g * (flops / 6) ** a, rel=1e-12)
    assert tokens == pytest.approx((flops / 6) ** b / g, rel=1e-12)
    assert 6 * params * tokens == pytest.approx(flops, rel=1e-12)
    assert params == pytest.approx(brute_force_frontier(law, flops), rel=1e-3)
    assert law.compute_optimal_tokens(params) == pytest.approx(tokens, rel=1e-9)


def test_published_allocation_exponents() -> None:
    # Hoffmann et al. print a = 0.46, b = 0.54 for Approach 3; only the unrounded constants reproduce that.
    a, b = PUBLISHED["chinchilla_unrounded"].allocation_exponents
    assert (round(a, 2), round(b, 2)) == (0.46, 0.54)
    # Besiroglu et al.: their fit implies a = 0.513 (compatible with Approaches 1 and 2).
    assert PUBLISHED["epoch"].allocation_exponents[0] == pytest.approx(0.5126, abs=1e-3)


def test_loss_targeted_optimum_is_on_frontier_with_target_loss() -> None:
    params, tokens = CHINCHILLA.loss_targeted_optimum(2.0)
    assert CHINCHILLA.loss(params, tokens) == pytest.approx(2.0, rel=1e-12)
    assert params == pytest.approx(CHINCHILLA.compute_optimal(6 * params * tokens)[0], rel=1e-9)


@pytest.mark.parametrize("inference_tokens", [0.0, 1e11, 2e12, 1e14])
def test_inference_optimal_matches_brute_force(inference_tokens: float) -> None:
    # Derived from Sardana et al.'s formulation (minimise 6 N D + 2 N T s.t. L = target), solved by brute force.
    target = CHINCHILLA.loss(7e9, 1.4e11)  # a Chinchilla-style 7B quality target
    best = budget.inference_optimal(CHINCHILLA, target, inference_tokens)
    n = np.exp(np.linspace(math.log(CHINCHILLA.min_params_for_loss(target)) + 1e-7, math.log(1e11), 400_001))
    d = (CHINCHILLA.B / (target - CHINCHILLA.E - CHINCHILLA.A / n**CHINCHILLA.alpha)) ** (1 / CHINCHILLA.beta)
    lifetime = 6 * n * d + 2 * n * inference_tokens
    assert best.params == pytest.approx(n[np.argmin(lifetime)], rel=1e-3)
    assert best.lifetime_flops == pytest.approx(lifetime.min(), rel=1e-6)
    assert best.loss == pytest.approx(target, rel=1e-9)


def test_inference_demand_shrinks_model_and_overtrains() -> None:
    target = CHINCHILLA.loss(7e9, 1.4e11)
    chinchilla = budget.loss_targeted(CHINCHILLA, target)
    results = [budget.inference_optimal(CHINCHILLA, target, t) for t in (0, 1e12, 1e13)]
    assert results[0].params == pytest.approx(chinchilla.params, rel=1e-9)
    assert results[0].params > results[1].params > results[2].params
    assert results[0].tokens_per_param < results[1].tokens_per_param < results[2].tokens_per_param
    # Same quality, fewer lifetime FLOPs than serving the Chinchilla-optimal model.
    served = chinchilla.train_flops + 2 * chinchilla.params * 1e13
    assert results[2].lifetime_flops < served


def test_cost_version_weights_phases() -> None:
    target = 2.2
    cheap_decode = budget.CostModel(peak_flops=1e15, decode_mfu=1.0)
    slow_decode = budget.CostModel(peak_flops=1e15, decode_mfu=0.01)
    fast = budget.inference_optimal(CHINCHILLA, target, 1e12, cost=cheap_decode)
    slow = budget.inference_optimal(CHINCHILLA, target, 1e12, cost=slow_decode)
    assert slow.params < fast.params  # dearer inference pushes to smaller, longer-trained models
    expected = fast.params * (6 * fast.tokens * 2 / 3600 / (1e15 * 0.5) + 2 * 1e12 * 2 / 3600 / 1e15)
    assert fast.cost == pytest.approx(expected, rel=1e-9)


def test_choose_tokens_policies() -> None:
    n = 135_000_000
    assert budget.choose_tokens("fixed", n, tokens=2e12).tokens == 2_000_000_000_000
    assert budget.choose_tokens("tokens_per_param", n, tokens_per_param=20).tokens == 20 * n
    chin = budget.choose_tokens("chinchilla", n)
    assert chin.tokens == pytest.approx(CHINCHILLA.compute_optimal_tokens(n), rel=1e-9)
    assert budget.choose_tokens("inference_optimal", n, inference_tokens=0).tokens == chin.tokens
    heavy = budget.choose_tokens("inference_optimal", n, inference_tokens=1e13, train_flops_per_token=7e8)
    assert heavy.tokens > 10 * chin.tokens
    assert heavy.train_flops == pytest.approx(7e8 * heavy.tokens)
    assert any("over-trained" in line for line in heavy.reasoning)
    # The chosen D makes N the lifetime-optimal size for the loss it reaches.
    target = CHINCHILLA.loss(n, heavy.tokens)
    assert budget.inference_optimal(CHINCHILLA, target, 1e13).params == pytest.approx(n, rel=1e-6)


@pytest.mark.parametrize(
    ("call", "key"),
    [
        (lambda: CHINCHILLA.loss(0, 1e9), "params"),
        (lambda: CHINCHILLA.loss(1e9, -1), "tokens"),
        (lambda: CHINCHILLA.loss_targeted_optimum(1.69), "target_loss"),
        (lambda: budget.inference_optimal(CHINCHILLA, 1.0, 1e12), "target_loss"),
        (lambda: CHINCHILLA.tokens_for_loss(1e6, 2.0), "target_loss"),
        (lambda: CHINCHILLA.compute_optimal(0), "compute"),
        (lambda: ScalingLaw(E=1.7, A=-1, B=400, alpha=0.3, beta=0.3), "A"),
        (lambda: budget.choose_tokens("chinchilla", 0), "params"),
        (lambda: budget.choose_tokens("nope", 10), "policy"),
        (lambda: budget.choose_tokens("fixed", 10), "tokens"),
        (lambda: load_law("nope"), "law"),
        (lambda: law_from_options({"E": 1.7, "A": 400}), "B"),
    ],
)
def test_invalid_inputs_name_the_problem(call, key: str) -> None:
    with pytest.raises(ConfigError) as error:
        call()
    assert error.value.key == key


def test_law_from_file_and_constants(tmp_path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("E: 1.8\nA: 500\nB: 2000\nalpha: 0.35\nbeta: 0.37\n")
    assert load_law(str(path)).constants() == {"E": 1.8, "A": 500, "B": 2000, "alpha": 0.35, "beta": 0.37}
    given = law_from_options({"E": "1.69", "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28})
    assert given.constants() == CHINCHILLA.constants()
