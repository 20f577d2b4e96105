"""A small grid of training runs for fitting a law on one's own data and model family.

:func:`plan_grid` only plans: sizes from a width ladder of a base preset, each at several tokens-per-parameter
ratios, so the grid spans both N and D (Approach 3 needs both to vary). :func:`run_sweep` trains the grid
with ``slmtrain.train`` (each run a delta of one recipe) and fits the run directories it wrote (plan.json +
metrics.csv, read by :func:`slmtrain.scaling.runs.read_runs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
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


@dataclass
class SweepOptions:
    recipe: str = "demo"  # the recipe every run is a delta of (data, tokenizer, optimizer, schedule)
    out: str = "runs/sweep"  # one run directory per grid point; finished runs are skipped on a re-run
    d_models: list[int] = field(default_factory=lambda: [32, 64, 96])
    tokens_per_param: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    method: str = "chinchilla"
    bootstrap: int = 50
    plot: str = ""  # default OUT/scaling_fit.png
    format: str = "text"
    train: dict[str, Any] = field(default_factory=dict)  # extra recipe overrides for every run (train.optim.lr=...)


def run_sweep(options: dict[str, Any]) -> dict[str, Any]:
    """Train the grid through the training entry point's library call, then fit the law to the finished runs."""
    from slmtrain.config import build, merge
    from slmtrain.scaling.commands import run_fit
    from slmtrain.train.config import load_recipe
    from slmtrain.train.run import LAST_CHECKPOINT, train

    opts = build(SweepOptions, options)
    base = load_recipe(opts.recipe, opts.train)
    model = dict(base.model)
    grid = plan_grid(str(model.get("preset", "tiny")), tuple(opts.d_models), tuple(opts.tokens_per_param),
                     vocab_size=base.model_config.vocab_size)
    out = Path(opts.out)
    for run in grid:
        run_dir = out / run.name
        if (run_dir / "result.json").is_file():
            continue
        delta = {
            "name": run.name, "run_dir": str(run_dir), "model": {**model, **run.model},
            "budget": {"policy": "fixed", "tokens": run.tokens}, "export_hf": False, "samples": 0,
            "trainer": {"enable_progress_bar": False, "enable_model_summary": False},
        }
        print(f"sweep: {run.name} ({run.params:,} params, {run.tokens:,} tokens)", flush=True)
        train(load_recipe(opts.recipe, merge(opts.train, delta)), resume=(run_dir / LAST_CHECKPOINT).is_file())
    return run_fit({
        "runs": ",".join(str(out / run.name) for run in grid), "method": opts.method, "bootstrap": opts.bootstrap,
        "plot": opts.plot or str(out / "scaling_fit.png"), "format": opts.format,
    })
