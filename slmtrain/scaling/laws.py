"""The parametric scaling law L(N, D) = E + A / N^alpha + B / D^beta and its named published constant sets.

N is the total parameter count (Hoffmann et al. count embeddings, unlike Kaplan et al.), D the training tokens, and
training compute is approximated as C = 6 N D. The closed forms below are the ones every budget question reduces to.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slmtrain.config import ConfigError, UserError, build, load_yaml, require

LAW_KEYS = ("E", "A", "B", "alpha", "beta")


@dataclass(frozen=True)
class ScalingLaw:
    E: float
    A: float
    B: float
    alpha: float
    beta: float
    name: str = "custom"
    source: str = "user-supplied constants"

    def __post_init__(self) -> None:
        for key in LAW_KEYS:
            value = getattr(self, key)
            require(math.isfinite(value) and value > 0, key, f"must be a positive finite number, got {value}")

    # ------------------------------------------------------------------------------------------- evaluation
    def loss(self, params: Any, tokens: Any) -> Any:
        """L(N, D); accepts scalars or numpy arrays (broadcast)."""
        n, d = np.asarray(params, dtype=float), np.asarray(tokens, dtype=float)
        if np.any(n <= 0) or np.any(d <= 0):
            raise ConfigError("params" if np.any(n <= 0) else "tokens", "must be positive")
        value = self.E + self.A / n**self.alpha + self.B / d**self.beta
        return float(value) if value.ndim == 0 else value

    # ------------------------------------------------------------------------------------------- closed forms
    @property
    def allocation_exponents(self) -> tuple[float, float]:
        """(a, b) with N_opt ∝ C^a and D_opt ∝ C^b: a = beta / (alpha + beta), b = alpha / (alpha + beta)."""
        total = self.alpha + self.beta
        return self.beta / total, self.alpha / total

    @property
    def G(self) -> float:
        """G = (alpha A / (beta B))^(1 / (alpha + beta)), so N_opt = G (C/6)^a and D_opt = G^-1 (C/6)^b."""
        return (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))

    def compute_optimal(self, flops: float) -> tuple[float, float]:
        """(N_opt, D_opt) minimising L(N, D) subject to 6 N D = flops (Hoffmann et al. 2022, eq. 4)."""
        require(math.isfinite(flops) and flops > 0, "compute", f"must be a positive FLOP count, got {flops}")
        a, b = self.allocation_exponents
        return self.G * (flops / 6) ** a, (flops / 6) ** b / self.G

    def compute_optimal_tokens(self, params: float) -> float:
        """D such that (N, D) lies on the compute-optimal frontier: alpha A N^-alpha = beta B D^-beta."""
        require(params > 0, "params", f"must be positive, got {params}")
        return (self.beta * self.B * params**self.alpha / (self.alpha * self.A)) ** (1.0 / self.beta)

    def min_params_for_loss(self, target_loss: float) -> float:
        """Below this N the target is unreachable even with infinite data (A N^-alpha >= target - E)."""
        return (self.A / self._excess(target_loss)) ** (1.0 / self.alpha)

    def tokens_for_loss(self, params: float, target_loss: float) -> float:
        """D with L(N, D) = target_loss, or a ConfigError when this N cannot reach it."""
        require(params > 0, "params", f"must be positive, got {params}")
        data_term = self._excess(target_loss) - self.A / params**self.alpha
        require(
            data_term > 0,
            "target_loss",
            f"{target_loss} is unreachable with N={params:.4g} parameters: the loss floor for that size is "
            f"E + A/N^alpha = {self.E + self.A / params**self.alpha:.4f}; use a larger model or a higher target",
        )
        return (self.B / data_term) ** (1.0 / self.beta)

    def loss_targeted_optimum(self, target_loss: float) -> tuple[float, float]:
        """(N, D) reaching target_loss with the fewest training FLOPs. On the frontier A N^-alpha (1 + alpha/beta)
        = target - E, hence N = (A (alpha + beta) / (beta (target - E)))^(1/alpha), and D symmetrically."""
        excess, total = self._excess(target_loss), self.alpha + self.beta
        params = (self.A * total / (self.beta * excess)) ** (1.0 / self.alpha)
        tokens = (self.B * total / (self.alpha * excess)) ** (1.0 / self.beta)
        return params, tokens

    def _excess(self, target_loss: float) -> float:
        require(
            math.isfinite(target_loss) and target_loss > self.E,
            "target_loss",
            f"must exceed the irreducible loss E={self.E} of law {self.name!r}, got {target_loss}",
        )
        return target_loss - self.E

    def constants(self) -> dict[str, float]:
        return {key: getattr(self, key) for key in LAW_KEYS}


PUBLISHED: dict[str, ScalingLaw] = {
    "chinchilla": ScalingLaw(
        E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28, name="chinchilla",
        source="Hoffmann et al. 2022, 'Training Compute-Optimal Large Language Models', eq. 10 (rounded as printed)",
    ),
    # The paper body rounds alpha and beta to two digits, which moves the predicted allocation noticeably;
    # Besiroglu et al. 2024 (v2, section 2) recovered the unrounded fit from the arXiv TeX source:
    # log A = 6.0073404, log B = 6.0179186, log E = 0.5267228, alpha = 0.33917084, beta = 0.2849083.
    "chinchilla_unrounded": ScalingLaw(
        E=math.exp(0.5267228), A=math.exp(6.0073404), B=math.exp(6.0179186), alpha=0.33917084, beta=0.2849083,
        name="chinchilla_unrounded",
        source="Hoffmann et al. 2022 TeX source, as reported by Besiroglu et al. 2024 (arXiv:2404.10102v2)",
    ),
    # Sardana et al. 2024 (App. A) use Hoffmann's E, A, B with alpha, beta as re-derived by De Vries.
    "sardana": ScalingLaw(
        E=1.69, A=406.4, B=410.7, alpha=0.336, beta=0.283, name="sardana",
        source="Sardana et al. 2024, 'Beyond Chinchilla-Optimal', App. A (Chinchilla's A, B, E; alpha 0.336, beta 0.283)",
    ),
    "epoch": ScalingLaw(
        E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658, name="epoch",
        source="Besiroglu et al. 2024, 'Chinchilla Scaling: A replication attempt' (Epoch AI), eq. 3",
    ),
}


def law_names() -> list[str]:
    return sorted(PUBLISHED)


def load_law(name_or_path: str) -> ScalingLaw:
    """A published set by name, or a YAML/JSON file holding E, A, B, alpha, beta (and optionally name, source)."""
    if name_or_path in PUBLISHED:
        return PUBLISHED[name_or_path]
    path = Path(name_or_path)
    if path.suffix.lower() not in (".yaml", ".yml", ".json"):
        raise ConfigError("law", f"unknown law {name_or_path!r}; valid choices: {', '.join(law_names())} "
                                 "or a .yaml/.json file with E, A, B, alpha, beta")
    if not path.is_file():
        raise UserError(f"law file not found: {path}")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError("law", f"{path}: not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise ConfigError("law", f"{path}: expected an object with keys {', '.join(LAW_KEYS)}")
    else:
        data = load_yaml(path)
    missing = [key for key in LAW_KEYS if key not in data]
    if missing:
        raise ConfigError("law", f"{path}: missing {', '.join(missing)}")
    return build(ScalingLaw, {"name": path.stem, "source": str(path), **data})


def law_from_options(options: dict[str, Any]) -> ScalingLaw:
    """``law=NAME|FILE`` or all five constants given directly (``E=1.69 A=406.4 ...``); default: chinchilla."""
    given = [key for key in LAW_KEYS if key in options]
    if given and "law" in options:
        raise ConfigError("law", f"give either law=NAME|FILE or the constants {', '.join(LAW_KEYS)}, not both")
    if given:
        missing = [key for key in LAW_KEYS if key not in options]
        if missing:
            raise ConfigError(missing[0], f"missing; a law given by constants needs all of {', '.join(LAW_KEYS)}")
        return build(ScalingLaw, {key: options[key] for key in LAW_KEYS})
    return load_law(str(options.get("law", "chinchilla")))
