"""A small grid of training runs for fitting a law on one's own data and model family.

:func:`plan_grid` only plans: sizes from a width ladder of a base preset, each at several tokens-per-parameter
ratios, so the grid spans both N and D (Approach 3 needs both to vary). Training the grid and fitting it spans
rooms: :func:`slmtrain.orchestrate.run_sweep`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmtrain.config import require
from slmtrain.model import presets


@dataclass(frozen=True)
class PlannedRun:
    name: str
    model: dict[str, Any]  # overrides of the base preset
    params: int
    tokens: int


def plan_grid(base: str = "tiny", d_models: tuple[int, ...] = (64, 96, 128, 192),
              tokens_per_param: tuple[float, ...] = (5.0, 10.0, 20.0, 40.0), layers_per_64: int = 1,
              vocab_size: int | None = None) -> list[PlannedRun]:
    """One run per (width, ratio); depth grows with width (``layers_per_64`` layers per 64 of d_model, >= 2)."""
    require(len(d_models) >= 2 and len(tokens_per_param) >= 2, "d_models",
            "a fit needs at least 2 sizes and 2 token ratios")
    require(all(r > 0 for r in tokens_per_param), "tokens_per_param", "ratios must be positive")
    base_config = presets.get(base)
    runs = []
    for d_model in d_models:
        head_dim = base_config.head_dim_
        require(d_model % head_dim == 0, "d_models", f"{d_model} is not a multiple of head_dim {head_dim}")
        n_head = d_model // head_dim
        overrides: dict[str, Any] = {
            "d_model": d_model, "n_head": n_head, "n_layer": max(2, layers_per_64 * d_model // 64),
            "n_kv_head": n_head if base_config.n_kv_head is None or n_head % base_config.kv_heads else base_config.kv_heads,
            "ffn_hidden": None,
        }
        if vocab_size is not None:
            overrides["vocab_size"] = vocab_size
        params = presets.get(base, **overrides).params()
        for ratio in tokens_per_param:
            runs.append(PlannedRun(f"d{d_model}-tpp{ratio:g}", overrides, params, int(round(ratio * params))))
    return runs
