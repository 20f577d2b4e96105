"""What spans rooms: building the demo data (curation, then tokenizer and shards) before training, and scaling
sweeps (a grid of training runs, then a fit of their losses). The rooms below never call each other this way:
training does not run curation, scaling does not run training."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmtrain.config import build, merge
from slmtrain.scaling.sweep import plan_grid
from slmtrain.train.config import DataConfig, TrainConfig, load_recipe


def ensure_data(config: DataConfig, workers: int = 1) -> Path:
    """The shards folder, built first when missing and ``config.build`` says how (``demo``: curate the embedded
    demo source, train its tokenizer, write shards). Without a build the trainer's own check reports the gap."""
    shards = Path(config.shards)
    if (shards / "meta.json").is_file() or config.build == "none":
        return shards
    from slmtrain.data.curate import run_pipeline
    from slmtrain.data.shards import prepare_shards

    curated = Path(config.curated)
    print(f"building the demo corpus: curation -> {curated}", flush=True)
    run_pipeline("demo", None, curated, workers=workers)
    print(f"training the '{config.tokenizer}' tokenizer and writing shards -> {shards}", flush=True)
    prepare_shards(config.tokenizer, curated, shards, workers=workers, val_fraction=0.02,
                   tokenizer_dir=config.tokenizer_dir)
    return shards


def train_recipe(config: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """``launch/train.py``: the recipe's data (built when it says how), then the run, with the benchmarks of
    ``eval.tasks`` scored as it trains."""
    from slmtrain.train.run import train

    callbacks = []
    if config.eval.tasks:
        from slmtrain.eval.in_loop import DownstreamEvaluator

        callbacks.append(DownstreamEvaluator(config.eval, config.run_path))
    ensure_data(config.data)
    return train(config, resume=resume, callbacks=callbacks)


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
    from slmtrain.scaling.commands import run_fit
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
        config = load_recipe(opts.recipe, merge(opts.train, delta))
        ensure_data(config.data)
        train(config, resume=(run_dir / LAST_CHECKPOINT).is_file())
    return run_fit({
        "runs": ",".join(str(out / run.name) for run in grid), "method": opts.method, "bootstrap": opts.bootstrap,
        "plot": opts.plot or str(out / "scaling_fit.png"), "format": opts.format,
    })
