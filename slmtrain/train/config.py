"""TrainConfig: everything a training run needs, built from ``recipes/NAME.yaml`` (a delta over ``recipes/_base.yaml``)
plus ``key.sub=value`` command-line overrides, validated at load time."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from slmtrain.config import REPO_ROOT, ConfigError, build, load_declaration, merge, require
from slmtrain.model import presets
from slmtrain.model.config import ModelConfig

RECIPES_DIR = REPO_ROOT / "recipes"


@dataclass
class DataConfig:
    shards: str = "runs/data/demo/shards"  # token shards written by launch/tokenize.py (train/ and val/ splits)
    seq_len: int = 256
    document_mask: bool = False  # no attention across the documents packed into one sample
    build: Literal["none", "demo"] = "none"  # build the shards when missing: "demo" runs curation + tokenizer
    curated: str = "runs/data/demo/curated"  # where "build" writes the curated text
    tokenizer: str = "demo"  # tokenizers/NAME.yaml used by "build"
    tokenizer_dir: str | None = None  # where "build" keeps the trained tokenizer; None: tokenizers/NAME/
    num_workers: int = 0
    val_samples: int = 64  # validation samples per evaluation (the first ones of the val split, always the same)

    def __post_init__(self) -> None:
        require(self.seq_len > 0, "seq_len", f"must be positive, got {self.seq_len}")
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
    trainer: dict[str, Any] = field(default_factory=dict)  # passed to lightning.Trainer (max_steps, devices, ...)
    precision: str = "auto"  # auto: bf16-mixed on GPUs that support it, else 32-true
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    compile: bool = False
    log_every_n_steps: int = 10
    val_every_n_steps: int = 100
    ckpt_every_n_steps: int = 100
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
            self.model_config  # resolves and validates the preset and its overrides
        except ConfigError as e:
            raise e.under("model") from None
        for key in ("log_every_n_steps", "val_every_n_steps", "ckpt_every_n_steps"):
            require(getattr(self, key) > 0, key, "must be positive")
        require(0 < self.mfu_assumed <= 1, "mfu_assumed", "must be in (0, 1]")
        for logger in self.loggers:
            require(logger in ("csv", "tensorboard", "wandb"), "loggers", f"unknown logger {logger!r}; valid choices: csv, tensorboard, wandb")

    @property
    def model_config(self) -> ModelConfig:
        return presets.resolve(self.model)

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path("runs") / self.name


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml") if not p.stem.startswith("_"))


def load_recipe(name: str | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """recipes/NAME.yaml (default ``demo``) with ``base:`` chains resolved, then overrides, as a TrainConfig."""
    data = load_declaration("recipe", name or "demo", RECIPES_DIR)
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
    axes = _flatten(grid)
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


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, path + "."))
        else:
            flat[path] = value
    return flat
