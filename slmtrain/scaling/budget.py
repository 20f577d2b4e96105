"""How many parameters and tokens: compute-optimal, loss-targeted, and inference-aware (Sardana et al. 2023).

Conventions: training costs 6 N FLOPs per token and inference 2 N per token (prompt or generated), as in Hoffmann
et al. and Sardana et al. The inference-aware problem is

    minimise  k_train * N * D  +  k_infer * N      subject to  L(N, D) = target

with k_train = 6, k_infer = 2 * (inference tokens) for FLOPs, or the same weighted by dollars per FLOP of each phase
(:class:`CostModel`) for money. Its first-order condition, for the law E + A/N^alpha + B/D^beta, reads

    k_train * D * (alpha A N^-alpha / (beta B D^-beta) - 1) = k_infer                                  (*)

(at k_infer = 0 this is the Chinchilla frontier alpha A N^-alpha = beta B D^-beta). (*) defines, for each N, the
lifetime-optimal D: the one used both for the target-loss optimum (intersect (*) with L = target) and for a recipe
whose model size is fixed (:func:`choose_tokens` policy ``inference_optimal``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from scipy.optimize import brentq

from slmtrain.config import ConfigError, check_choice, require
from slmtrain.scaling.laws import ScalingLaw, load_law

POLICIES = ("fixed", "tokens_per_param", "chinchilla", "inference_optimal")
SECONDS_PER_HOUR = 3600.0


@dataclass
class CostModel:
    """Dollars per FLOP of each phase: price / (peak FLOP/s * utilisation). Prefill is compute-bound like training;
    decode is memory-bound, hence its much lower default utilisation. Defaults are assumptions, not measurements."""

    peak_flops: float  # FLOP/s of one accelerator at the precision used
    train_mfu: float = 0.5
    prefill_mfu: float = 0.5
    decode_mfu: float = 0.05
    train_price_per_hour: float = 2.0  # dollars per accelerator-hour
    inference_price_per_hour: float = 2.0

    def __post_init__(self) -> None:
        require(self.peak_flops > 0, "peak_flops", f"must be positive, got {self.peak_flops}")
        for key in ("train_mfu", "prefill_mfu", "decode_mfu"):
            value = getattr(self, key)
            require(0 < value <= 1, key, f"must be in (0, 1], got {value}")
        for key in ("train_price_per_hour", "inference_price_per_hour"):
            require(getattr(self, key) > 0, key, f"must be positive, got {getattr(self, key)}")

    def dollars_per_flop(self, phase: str) -> float:
        check_choice("phase", phase, ("train", "prefill", "decode"))
        price = self.train_price_per_hour if phase == "train" else self.inference_price_per_hour
        return price / SECONDS_PER_HOUR / (self.peak_flops * getattr(self, f"{phase}_mfu"))


@dataclass
class Allocation:
    params: float
    tokens: float
    loss: float
    train_flops: float
    inference_flops: float = 0.0
    cost: float | None = None  # dollars, when a CostModel was given
    law: str = ""

    @property
    def tokens_per_param(self) -> float:
        return self.tokens / self.params

    @property
    def lifetime_flops(self) -> float:
        return self.train_flops + self.inference_flops

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "params": self.params, "tokens": self.tokens, "tokens_per_param": self.tokens_per_param,
            "loss": self.loss, "train_flops": self.train_flops, "inference_flops": self.inference_flops,
            "lifetime_flops": self.lifetime_flops, "law": self.law,
        }
        if self.cost is not None:
            out["cost"] = self.cost
        return out


def _allocation(law: ScalingLaw, params: float, tokens: float, inference_tokens: float = 0.0,
                prompt_tokens: float = 0.0, cost: CostModel | None = None) -> Allocation:
    dollars = None
    if cost is not None:
        dollars = params * (6 * tokens * cost.dollars_per_flop("train")
                            + 2 * prompt_tokens * cost.dollars_per_flop("prefill")
                            + 2 * inference_tokens * cost.dollars_per_flop("decode"))
    return Allocation(params, tokens, law.loss(params, tokens), 6 * params * tokens,
                      2 * params * (inference_tokens + prompt_tokens), dollars, law.name)


def compute_optimal(law: ScalingLaw, flops: float) -> Allocation:
    """Lowest loss for a training budget C = 6 N D."""
    return _allocation(law, *law.compute_optimal(flops))


def loss_targeted(law: ScalingLaw, target_loss: float) -> Allocation:
    """Fewest training FLOPs reaching target_loss (the Chinchilla frontier point with that loss)."""
    return _allocation(law, *law.loss_targeted_optimum(target_loss))


def _weights(inference_tokens: float, prompt_tokens: float, cost: CostModel | None) -> tuple[float, float]:
    """(k_train, k_infer) of the lifetime objective k_train N D + k_infer N."""
    require(inference_tokens >= 0, "inference_tokens", f"must be >= 0, got {inference_tokens}")
    require(prompt_tokens >= 0, "prompt_tokens", f"must be >= 0, got {prompt_tokens}")
    if cost is None:
        return 6.0, 2.0 * (inference_tokens + prompt_tokens)
    return (6.0 * cost.dollars_per_flop("train"),
            2.0 * (prompt_tokens * cost.dollars_per_flop("prefill") + inference_tokens * cost.dollars_per_flop("decode")))


def lifetime_optimal_tokens(law: ScalingLaw, params: float, k_train: float, k_infer: float) -> float:
    """The D solving (*) for this N: Chinchilla-optimal D at k_infer = 0, more tokens as inference grows."""
    require(params > 0, "params", f"must be positive, got {params}")
    chinchilla_tokens = law.compute_optimal_tokens(params)
    if k_infer == 0:
        return chinchilla_tokens
    ratio = k_infer / k_train
    data_scale = law.alpha * law.A * params**-law.alpha / (law.beta * law.B)

    def residual(log_d: float) -> float:  # (*) divided by k_train, monotone increasing above log D_chinchilla
        d = math.exp(log_d)
        return d * (data_scale * d**law.beta - 1.0) - ratio

    low, high = math.log(chinchilla_tokens), math.log(chinchilla_tokens) + 1.0
    while residual(high) < 0:
        high += 1.0
    return math.exp(brentq(residual, low, high, xtol=1e-12, rtol=1e-12))


def inference_optimal(law: ScalingLaw, target_loss: float, inference_tokens: float, prompt_tokens: float = 0.0,
                      cost: CostModel | None = None) -> Allocation:
    """Sardana et al. 2023: the (N, D) reaching target_loss with the least lifetime FLOPs (or dollars with ``cost``),
    serving ``inference_tokens`` generated and ``prompt_tokens`` prompt tokens over the model's life."""
    k_train, k_infer = _weights(inference_tokens, prompt_tokens, cost)
    n_chinchilla, _ = law.loss_targeted_optimum(target_loss)
    if k_infer == 0:
        return _allocation(law, n_chinchilla, law.tokens_for_loss(n_chinchilla, target_loss), inference_tokens,
                           prompt_tokens, cost)
    excess, n_min = target_loss - law.E, law.min_params_for_loss(target_loss)

    def residual(log_n: float) -> float:
        # (*) along L = target, divided by k_train: +inf as N -> N_min (D -> inf), -k_infer/k_train at N_chinchilla.
        n = math.exp(log_n)
        data_term = excess - law.A * n**-law.alpha
        d = (law.B / data_term) ** (1 / law.beta)
        return d * (law.alpha * law.A * n**-law.alpha / (law.beta * data_term) - 1.0) - k_infer / k_train

    low, high = math.log(n_min), math.log(n_chinchilla)
    offset = (high - low) / 2
    while not residual(low + offset) > 0:  # approach N_min, where (*) is positive, to bracket the root
        offset /= 2
        if offset < 1e-12:
            raise ConfigError("inference_tokens", "inference demand too large for this law to resolve numerically")
    params = math.exp(brentq(residual, low + offset, high, xtol=1e-13, rtol=1e-13))
    return _allocation(law, params, law.tokens_for_loss(params, target_loss), inference_tokens, prompt_tokens, cost)


# ------------------------------------------------------------------------------------------------ recipes
@dataclass
class Decision:
    """The token budget a recipe trains on, with the reasoning the training dry run prints."""

    policy: str
    params: int
    tokens: int
    tokens_per_param: float
    train_flops: float
    reasoning: list[str] = field(default_factory=list)


def choose_tokens(policy: str, params: int, *, tokens: float | None = None, tokens_per_param: float | None = None,
                  inference_tokens: float | None = None, law: ScalingLaw | str = "chinchilla",
                  train_flops_per_token: float | None = None) -> Decision:
    """Training tokens for a model of ``params`` parameters.

    - ``fixed``: ``tokens`` as given.
    - ``tokens_per_param``: ``tokens_per_param * params``.
    - ``chinchilla``: the compute-optimal D for this N under ``law`` (the D whose frontier point has this N).
    - ``inference_optimal``: the N is fixed by the recipe, so ask which D makes this N the lifetime-optimal choice
      (Sardana et al.) for ``inference_tokens`` served: the D solving (*) with k_infer / k_train = T / 3. Equivalently,
      (N, D) is the least-lifetime-FLOPs way to reach the loss L(N, D) it achieves. T = 0 gives ``chinchilla``.
    ``train_flops_per_token`` (e.g. ModelConfig.train_flops_per_token) replaces the 6 N estimate in ``train_flops``.
    """
    check_choice("policy", policy, POLICIES)
    require(params > 0, "params", f"must be positive, got {params}")
    law = load_law(law) if isinstance(law, str) else law
    reasoning: list[str] = []
    if policy == "fixed":
        require(tokens is not None and tokens > 0, "tokens", f"policy 'fixed' needs tokens > 0, got {tokens}")
        chosen = float(tokens)  # type: ignore[arg-type]
        reasoning.append(f"policy fixed: train on the given {chosen:.4g} tokens")
    elif policy == "tokens_per_param":
        require(tokens_per_param is not None and tokens_per_param > 0, "tokens_per_param",
                f"policy 'tokens_per_param' needs tokens_per_param > 0, got {tokens_per_param}")
        chosen = float(tokens_per_param) * params  # type: ignore[arg-type]
        reasoning.append(f"policy tokens_per_param: {tokens_per_param:g} tokens/param x {params:,} params")
    elif policy == "chinchilla":
        chosen = law.compute_optimal_tokens(params)
        reasoning.append(f"policy chinchilla: under law {law.name} (E={law.E:.4g}, A={law.A:.4g}, B={law.B:.4g}, "
                         f"alpha={law.alpha:.4g}, beta={law.beta:.4g}) the compute-optimal frontier passes N={params:,} "
                         f"at D={chosen:.4g} ({chosen / params:.1f} tokens/param)")
    else:
        require(inference_tokens is not None and inference_tokens >= 0, "inference_tokens",
                f"policy 'inference_optimal' needs inference_tokens >= 0, got {inference_tokens}")
        chinchilla = law.compute_optimal_tokens(params)
        chosen = lifetime_optimal_tokens(law, params, 6.0, 2.0 * float(inference_tokens))  # type: ignore[arg-type]
        reasoning += [
            f"policy inference_optimal: {inference_tokens:.4g} lifetime inference tokens cost 2N each, training 6N per token",
            f"law {law.name}: compute-optimal D for N={params:,} is {chinchilla:.4g} ({chinchilla / params:.1f} tokens/param)",
            f"lifetime-optimal D (Sardana et al. 2023 first-order condition) is {chosen:.4g} "
            f"({chosen / params:.1f} tokens/param, {chosen / chinchilla:.2f}x over-trained)",
            f"predicted loss {law.loss(params, chosen):.4f} vs {law.loss(params, chinchilla):.4f} at the compute optimum; "
            f"lifetime FLOPs {6 * params * chosen + 2 * params * inference_tokens:.4g}",  # type: ignore[operator]
        ]
    flops_per_token = 6.0 * params if train_flops_per_token is None else float(train_flops_per_token)
    rounded = max(int(round(chosen)), 1)
    reasoning.append(f"train tokens {rounded:,}; training FLOPs {flops_per_token * rounded:.4g}")
    return Decision(policy, int(params), rounded, rounded / params, flops_per_token * rounded, reasoning)
