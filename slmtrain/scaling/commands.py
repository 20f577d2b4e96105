"""The ``fit`` and ``budget`` commands of launch/scaling.py as typed options -> one JSON-able dict."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmtrain.config import ConfigError, UserError, build
from slmtrain.hardware import get_device
from slmtrain.scaling import budget, devices
from slmtrain.scaling.fit import FIT_METHODS, fit, isoflop_fit
from slmtrain.scaling.laws import LAW_KEYS, law_from_options
from slmtrain.scaling.plots import plot_fit
from slmtrain.scaling.runs import read_runs


@dataclass
class FitOptions:
    runs: str = ""  # FILE.csv, RUN_DIR, or a folder of run directories; comma-separated for several
    method: str = "chinchilla"
    drop_highest: int = 0  # Besiroglu et al. drop the 5 highest-loss runs of the Chinchilla data
    bootstrap: int = 200
    seed: int = 0
    plot: str = ""  # a PNG path; default RUN_DIR/scaling_fit.png when runs= is one folder, else no plot
    format: str = "text"

    def __post_init__(self) -> None:
        if not self.runs:
            raise ConfigError("runs", "required: runs=FILE.csv or runs=RUN_DIR[,RUN_DIR...]")
        if self.method not in FIT_METHODS:
            raise ConfigError("method", f"invalid value {self.method!r}; valid choices: {', '.join(FIT_METHODS)}")
        if self.format not in ("text", "json"):
            raise ConfigError("format", f"invalid value {self.format!r}; valid choices: text, json")
        if self.bootstrap < 0:
            raise ConfigError("bootstrap", f"must be >= 0, got {self.bootstrap}")


def run_fit(options: dict[str, Any]) -> dict[str, Any]:
    opts = build(FitOptions, options)
    runs = read_runs(opts.runs)
    if opts.drop_highest:
        runs = runs.drop_highest_loss(opts.drop_highest)
    result = fit(runs, opts.method, bootstrap=opts.bootstrap, seed=opts.seed)
    out: dict[str, Any] = result.to_dict()
    try:
        out["isoflop"] = isoflop_fit(runs).to_dict()
    except UserError as e:  # the runs need not form IsoFLOP groups; say why Approach 2 was skipped
        out["isoflop"] = {"skipped": str(e)}
    plot = opts.plot or (str(Path(opts.runs) / "scaling_fit.png") if Path(opts.runs).is_dir() else "")
    if plot:
        out["plot"] = str(plot_fit(result.law, runs, Path(plot)))
    return out


@dataclass
class BudgetOptions:
    law: str | None = None
    E: float | None = None
    A: float | None = None
    B: float | None = None
    alpha: float | None = None
    beta: float | None = None
    compute: float | None = None  # training FLOPs
    target_loss: float | None = None
    inference_tokens: float = 0.0  # generated (decode) tokens over the model's life
    prompt_tokens: float = 0.0  # prompt (prefill) tokens over the model's life
    params: float | None = None  # a fixed model size: tokens from policy
    policy: str = "inference_optimal"
    # a slmtrain.hardware profile: with target_loss, the cost version (its peak FLOP/s at `precision`); with
    # deploy=true, the device to plan a model for
    hardware: str | None = None
    deploy: bool = False  # plan for hardware=: the model must fit its memory and decode min_tokens_per_s
    train_mfu: float = 0.5
    prefill_mfu: float = 0.5
    decode_mfu: float = 0.05
    train_price_per_hour: float = 2.0
    inference_price_per_hour: float = 2.0
    # deployment version (deploy=true)
    precision: str = "int4"
    context: int = 4096
    min_tokens_per_s: float = 20.0
    memory_fraction: float = 0.5
    family: str = "balanced"
    vocab_size: int = 32000
    format: str = "text"

    def __post_init__(self) -> None:
        if self.format not in ("text", "json"):
            raise ConfigError("format", f"invalid value {self.format!r}; valid choices: text, json")
        if self.deploy and self.hardware is None:
            raise ConfigError("hardware", "deploy=true plans for a device: give hardware=NAME")
        questions = [k for k in ("compute", "target_loss", "deploy", "params") if getattr(self, k) not in (None, False)]
        if not questions:
            raise ConfigError("", "say what to budget: compute=C, target_loss=L [inference_tokens=T], "
                                  "hardware=NAME deploy=true, or params=N [policy=...]")
        if self.compute is not None and len(questions) > 1:
            raise ConfigError("compute", f"compute=C answers alone; drop {', '.join(q for q in questions if q != 'compute')}")


def run_budget(options: dict[str, Any]) -> dict[str, Any]:
    opts = build(BudgetOptions, options)
    law = law_from_options({k: v for k, v in vars(opts).items() if k in ("law", *LAW_KEYS) and v is not None})
    cost = None
    if opts.hardware is not None and not opts.deploy:  # a deployment's device serves the model; it is not priced
        peak = get_device(opts.hardware).flops("bf16" if opts.precision in ("int4", "int8") else opts.precision)
        cost = budget.CostModel(peak, opts.train_mfu, opts.prefill_mfu, opts.decode_mfu, opts.train_price_per_hour,
                                opts.inference_price_per_hour)
    out: dict[str, Any]
    if opts.compute is not None:
        out = {"question": "compute_optimal", **budget.compute_optimal(law, opts.compute).to_dict()}
    elif opts.deploy:
        assert opts.hardware is not None
        deployment = devices.Deployment(opts.hardware, opts.precision, opts.context, opts.min_tokens_per_s,
                                        opts.memory_fraction)
        plan = devices.plan_for_device(law, deployment, opts.inference_tokens + opts.prompt_tokens, opts.target_loss,
                                       opts.family, opts.vocab_size)
        out = {"question": "device", "hardware": opts.hardware, "precision": opts.precision, **plan.to_dict()}
    elif opts.params is not None:
        decision = budget.choose_tokens(opts.policy, int(opts.params), law=law,
                                        inference_tokens=opts.inference_tokens + opts.prompt_tokens)
        out = {"question": f"tokens for N ({opts.policy})", "params": decision.params, "tokens": decision.tokens,
               "tokens_per_param": decision.tokens_per_param, "train_flops": decision.train_flops,
               "reasoning": decision.reasoning}
    else:
        assert opts.target_loss is not None
        chinchilla = budget.loss_targeted(law, opts.target_loss)
        best = budget.inference_optimal(law, opts.target_loss, opts.inference_tokens, opts.prompt_tokens, cost)
        out = {"question": "inference_optimal" if cost is None else "inference_optimal_cost", **best.to_dict(),
               "chinchilla_params": chinchilla.params, "chinchilla_tokens": chinchilla.tokens}
    out["law_constants"] = law.constants()
    return out
