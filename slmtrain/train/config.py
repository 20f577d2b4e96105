"""TrainConfig: everything a training run needs, built from ``recipes/NAME.yaml`` (a delta over ``recipes/_base.yaml``)
plus ``key.sub=value`` command-line overrides, validated at load time."""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from slmtrain.config import DECLARATIONS_DIR, ConfigError, _coerce, build, load_declaration, merge, require
from slmtrain.model import presets
from slmtrain.model.config import ModelConfig

RECIPES_DIR = DECLARATIONS_DIR / "recipes"


@dataclass
class DataConfig:
    shards: str = "runs/data/demo/shards"  # token shards written by launch/tokenize_data.py (train/ and val/ splits)
    seq_len: int = 256
    document_mask: bool = False  # no attention across the documents packed into one sample
    build: Literal["none", "demo"] = "none"  # build the shards when missing: "demo" runs curation + tokenizer
    curated: str = "runs/data/demo/curated"  # where "build" writes the curated text
    tokenizer: str = "demo"  # tokenizers/NAME.yaml used by "build"
    tokenizer_dir: str | None = None  # where "build" keeps the trained tokenizer; None: SHARDS/tokenizer
    num_workers: int = 0
    val_samples: int = 64  # validation samples per evaluation (the first ones of the val split, always the same)
    # training sources NAME: SHARDS_DIR mixed by `mixture` (slmtrain.train.mixture); `shards` then gives the
    # validation split and the tokenizer every source must share. Empty: train on `shards` alone
    sources: dict[str, str] = field(default_factory=dict)
    mixture: dict[str, float] = field(default_factory=dict)  # NAME: weight (normalised); empty: equal weights
    max_epochs: float = 4.0  # refuse a run that repeats a source more often (Muennighoff et al.: 4 epochs ~ fresh)

    def __post_init__(self) -> None:
        require(self.seq_len > 0, "seq_len", f"must be positive, got {self.seq_len}")
        require(self.max_epochs > 0, "max_epochs", f"must be positive, got {self.max_epochs}")
        for name, weight in self.mixture.items():
            require(name in self.sources, f"mixture.{name}", f"not a source; valid choices: "
                                                            f"{', '.join(self.sources) or '(no data.sources given)'}")
            require(isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0, f"mixture.{name}",
                    f"a weight is a finite number >= 0, got {weight!r}")
        require(not self.mixture or sum(self.mixture.values()) > 0, "mixture", "the weights are all zero")
        for name, path in self.sources.items():
            require(bool(str(path or "").strip()), f"sources.{name}", "expected a shards folder, got nothing")

    @property
    def source_weights(self) -> dict[str, float]:
        """NAME: weight of every source (equal when no mixture is given; a source the mixture leaves out: 0)."""
        if not self.mixture:
            return {name: 1.0 for name in self.sources}
        return {name: float(self.mixture.get(name, 0.0)) for name in self.sources}
        require(self.num_workers >= 0, "num_workers", "must be >= 0")
        require(self.val_samples >= 0, "val_samples", "must be >= 0")


@dataclass
class OptimConfig:
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio (cosine, wsd)
    weight_decay: float = 0.1  # applied to matrices only, not to norms, biases or embeddings
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 disables

    def __post_init__(self) -> None:
        require(self.lr > 0, "lr", f"must be positive, got {self.lr}")
        require(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "must be in [0, 1]")
        require(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        require(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "beta1", "betas must be in [0, 1)")
        require(self.grad_clip >= 0, "grad_clip", "must be >= 0")


@dataclass
class ScheduleConfig:
    kind: Literal["cosine", "wsd", "constant"] = "cosine"
    warmup_steps: int = 100
    decay_fraction: float = 0.2  # wsd: the last fraction of steps decays
    decay_shape: Literal["linear", "cosine", "1-sqrt"] = "1-sqrt"  # wsd decay shape

    def __post_init__(self) -> None:
        require(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        require(0 < self.decay_fraction <= 1, "decay_fraction", "must be in (0, 1]")


@dataclass
class BudgetConfig:
    """The token budget, chosen by slmtrain.scaling (see scaling.budget.choose_tokens)."""

    policy: Literal["fixed", "tokens_per_param", "chinchilla", "inference_optimal"] = "fixed"
    tokens: float | None = None  # fixed
    tokens_per_param: float | None = None  # tokens_per_param
    inference_tokens: float | None = None  # inference_optimal: tokens served over the model's lifetime
    law: str = "epoch"  # a named constant set of slmtrain.scaling.laws, or a YAML/JSON file


@dataclass
class BatchConfig:
    tokens: int = 8192  # global batch in tokens per optimizer step (a multiple of micro_batch * seq_len * world)
    micro_batch: int = 8  # sequences per device per forward/backward

    def __post_init__(self) -> None:
        require(self.tokens > 0, "tokens", "must be positive")
        require(self.micro_batch > 0, "micro_batch", "must be positive")


@dataclass
class DownstreamConfig:
    """Benchmarks scored during training (slmtrain.eval.in_loop), as OLMo-core's downstream evaluators."""

    tasks: list[str] = field(default_factory=list)  # task or suite names (slmtrain eval's); empty: none
    every_n_steps: int = 500  # and at the last step
    limit: int | None = 200  # the first N items of each task (None: all)
    shots: int = 0  # few-shot examples per item (a suite's own counts win)

    def __post_init__(self) -> None:
        require(self.every_n_steps > 0, "every_n_steps", f"must be positive, got {self.every_n_steps}")
        require(self.limit is None or self.limit > 0, "limit", f"must be positive (or null: all), got {self.limit}")
        require(self.shots >= 0, "shots", f"must be >= 0, got {self.shots}")


@dataclass
class TrainConfig:
    name: str = "demo"
    run_dir: str | None = None  # default: runs/NAME
    seed: int = 1337
    model: dict[str, Any] = field(default_factory=lambda: {"preset": "demo-2m"})  # preset + ModelConfig overrides
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    eval: DownstreamConfig = field(default_factory=DownstreamConfig)  # benchmarks every eval.every_n_steps steps
    trainer: dict[str, Any] = field(default_factory=dict)  # passed to lightning.Trainer (max_steps, devices, ...)
    precision: str = "auto"  # auto: bf16-mixed on GPUs that support it, else 32-true
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    compile: bool = False
    log_every_n_steps: int = 10
    val_every_n_steps: int = 100
    ckpt_every_n_steps: int = 100
    keep_checkpoints: int = 2  # step checkpoints kept beside last.ckpt (older intact ones to fall back on)
    resume_with_changes: bool = False  # ckpt=last with other schedule/data/model settings than the run's
    verbose: bool = False  # Lightning's own logging on the terminal (else it goes to RUN_DIR/train.log)
    nan_policy: Literal["stop", "skip"] = "stop"  # skip: a non-finite micro-batch adds no gradient (with
    # accumulation the step then averages over the other micro-batches, scaled by (accumulate - 1) / accumulate)
    max_nan_skips: int = 10
    loggers: list[str] = field(default_factory=lambda: ["csv"])  # csv always; add tensorboard, wandb
    wandb_project: str = "slmtrain"
    export_hf: bool = True
    samples: int = 2  # texts generated and printed at the end
    sample_tokens: int = 48
    gpu: str = "H100"  # GPU named in the dry-run plan's GPU-hours estimate
    mfu_assumed: float = 0.4  # for the dry-run estimate

    def __post_init__(self) -> None:
        try:
            model_config = self.model_config  # resolves and validates the preset and its overrides
        except ConfigError as e:
            raise e.under("model") from None
        require(self.data.seq_len <= model_config.max_seq_len, "data.seq_len",
                f"{self.data.seq_len} exceeds the model's context (model.max_seq_len={model_config.max_seq_len}); "
                f"lower data.seq_len or raise model.max_seq_len")
        require(self.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1")
        for key in ("log_every_n_steps", "val_every_n_steps", "ckpt_every_n_steps"):
            require(getattr(self, key) > 0, key, "must be positive")
        require(0 < self.mfu_assumed <= 1, "mfu_assumed", "must be in (0, 1]")
        validate_trainer_args(self.trainer)
        max_steps = self.trainer.get("max_steps")
        require(max_steps is None or max_steps == -1 or max_steps >= 1, "trainer.max_steps",
                f"must be >= 1 (or -1, Lightning's 'no limit': the budget decides), got {max_steps}")
        for logger in self.loggers:
            require(logger in ("csv", "tensorboard", "wandb"), "loggers", f"unknown logger {logger!r}; valid choices: csv, tensorboard, wandb")

    @property
    def model_config(self) -> ModelConfig:
        return presets.resolve(self.model)

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path("runs") / self.name


# Arguments of lightning.Trainer that slmtrain sets itself from its own keys (the key to use instead).
TRAINER_ARGS_OWNED = {"precision": "precision", "strategy": "strategy", "logger": "loggers", "callbacks": "",
                      "plugins": "", "default_root_dir": "run_dir", "accumulate_grad_batches": "batch.tokens",
                      "val_check_interval": "val_every_n_steps", "log_every_n_steps": "log_every_n_steps",
                      "use_distributed_sampler": ""}
SIMPLE_TYPES = {"int": int, "float": float, "bool": bool, "str": str}


@functools.cache
def trainer_parameters() -> dict[str, str]:
    """lightning.Trainer's keyword arguments and their annotations, read from its source without importing
    Lightning (a config error must cost no start-up)."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("lightning")
    if spec is None or spec.origin is None:
        raise ConfigError("trainer", "lightning is not installed")
    source = Path(spec.origin).parent / "pytorch" / "trainer" / "trainer.py"
    tree = ast.parse(source.read_text())
    trainer = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Trainer")
    init = next(n for n in trainer.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    return {a.arg: ast.unparse(a.annotation) if a.annotation else "Any" for a in init.args.kwonlyargs + init.args.args
            if a.arg != "self"}


def validate_trainer_args(args: dict[str, Any]) -> None:
    """Every ``trainer.KEY`` is a lightning.Trainer argument not owned by slmtrain, and a value of a simple declared
    type (int, float, bool, str, optionally None) has that type; values are coerced in place."""
    parameters = trainer_parameters()
    for key, value in list(args.items()):
        path = f"trainer.{key}"
        if key in TRAINER_ARGS_OWNED:
            instead = TRAINER_ARGS_OWNED[key]
            raise ConfigError(path, "set by slmtrain itself" + (f"; use {instead}= instead" if instead else ""))
        if key not in parameters:
            valid = sorted(k for k in parameters if k not in TRAINER_ARGS_OWNED)
            raise ConfigError(path, f"not a lightning.Trainer argument; valid keys: {', '.join(valid)}")
        names = [n.strip() for n in parameters[key].replace("Optional[", "").replace("Union[", "")
                 .replace("]", "").split(",")]
        if all(n in SIMPLE_TYPES or n == "None" for n in names):
            declared = [SIMPLE_TYPES[n] for n in names if n in SIMPLE_TYPES]
            optional = "None" in names or "Optional" in parameters[key]
            args[key] = _coerce(declared[0] if len(declared) == 1 and not optional
                                else (declared[0] | None if len(declared) == 1 else Any), value, path)


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml") if not p.stem.startswith("_"))


def load_recipe(name: str | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """recipes/NAME.yaml (default ``demo``) with ``base:`` chains resolved, then overrides, as a TrainConfig."""
    data = load_declaration("recipe", name or "demo", RECIPES_DIR)
    given_data = (overrides or {}).get("data", {})
    if isinstance(given_data, dict) and "shards" in given_data and "build" not in given_data:
        data.setdefault("data", {})["build"] = "none"  # the recipe's demo build only fills the recipe's own path
    data = merge(data, overrides or {})
    data.setdefault("name", Path(name or "demo").stem)
    return build(TrainConfig, data)


def expand_grid(overrides: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``grid.KEY=[a,b] grid.OTHER=[x,y]`` -> one (name, overrides) per combination (the cartesian product), each
    with ``run_dir`` under the base run directory; without ``grid`` the overrides come back alone."""
    overrides = dict(overrides)
    grid = overrides.pop("grid", None)
    if grid is None:
        return [("", overrides)]
    axes = flatten(grid)
    for key, values in axes.items():
        require(isinstance(values, list) and len(values) > 0, f"grid.{key}", "must be a non-empty list, e.g. [1e-3,3e-3]")
    runs = []
    for combination in itertools.product(*axes.values()):
        name = ",".join(f"{key}={value}" for key, value in zip(axes, combination))
        delta: dict[str, Any] = {}
        for key, value in zip(axes, combination):
            node = delta
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        runs.append((name, merge(overrides, delta)))
    return runs


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> dotted keys (``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}``); an empty dict is a value of
    its own, so a resumed run's check sees it and a grid axis given as ``{}`` is refused, not silently dropped."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
