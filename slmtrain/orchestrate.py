"""What spans rooms: building the demo data (curation, then tokenizer and shards) before training, scaling sweeps (a
grid of training runs, then a fit of their losses), and the routing demo (a model served by ``serve`` as the cloud of
a ``collab`` router). The rooms below never call each other this way: training does not run curation, scaling does
not run training, routing does not start a server."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmtrain.config import build, merge, require
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


@dataclass
class RouteDemoOptions:
    out: Path = Path("runs/collab_demo")  # models, data, router file, plot and report go here
    max_digits: int = 2  # sums of numbers with 1 to this many digits
    small_layers: int = 1  # the local model's depth
    small_width: int = 48  # and width
    small_steps: int = 1000  # its training steps (64 sums each)
    large_layers: int = 2  # the cloud model's depth
    large_width: int = 96  # and width
    large_steps: int = 3000  # its training steps
    examples: int = 1000  # sums to fit and calibrate the router on
    test_examples: int = 500  # held-out sums to evaluate it on
    target: float = 0.95  # keep quality >= target x cloud-only quality
    confidence: float = 0.95  # probability that the guarantee holds
    embedding: bool = True  # router features include the prompt's MiniLM embedding

    def __post_init__(self) -> None:
        for key in ("max_digits", "small_layers", "small_width", "small_steps", "large_layers", "large_width",
                    "large_steps", "examples", "test_examples"):
            require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        require(0 < self.target <= 1, "target", f"must be in (0, 1], got {self.target}")
        require(0 < self.confidence < 1, "confidence", f"must be in (0, 1), got {self.confidence}")


def route_demo(options: RouteDemoOptions) -> dict[str, Any]:
    """Train a small and a larger adder, serve the larger one over HTTP as the cloud (with an API key), calibrate a
    router for the small one and evaluate it on held-out sums."""
    import secrets

    from slmtrain.artifacts import load_model
    from slmtrain.collab import arithmetic
    from slmtrain.collab.commands import CalibrateOptions, EvalOptions, calibrate, evaluate
    from slmtrain.serve.app import create_app
    from slmtrain.serve.background import BackgroundServer
    from slmtrain.serve.schemas import ServeOptions

    out, digits = options.out, options.max_digits
    calibration_data = arithmetic.write_examples(out / "calibrate.jsonl", arithmetic.sums(options.examples, digits, 1))
    test_data = arithmetic.write_examples(out / "test.jsonl", arithmetic.sums(options.test_examples, digits, 2))
    models = {}
    for name, layers, width, steps in (("small", options.small_layers, options.small_width, options.small_steps),
                                       ("large", options.large_layers, options.large_width, options.large_steps)):
        trained = arithmetic.train_adder(arithmetic.adder(layers, width, digits), steps, digits)
        models[name] = str(arithmetic.save_adder(trained, out / name))
    key = secrets.token_hex(16)
    served = ServeOptions(model=models["large"], api_key=key, name="large")
    with BackgroundServer(create_app(load_model(models["large"]), served)) as cloud:
        calibrated = calibrate(CalibrateOptions(local=models["small"], cloud=cloud.base_url, data=calibration_data,
                                                out=out / "router.json", target=options.target,
                                                confidence=options.confidence, cloud_key=key,
                                                embedding=options.embedding, max_tokens=digits + 2))
        evaluated = evaluate(EvalOptions(router=out / "router.json", data=test_data, cloud_key=key))
    return {"calibration": calibrated, "evaluation": evaluated}
