"""Fine-tune a model on the user's JSONL data with one method, and write what a device needs from it.

RUN_DIR/adapter/   the LoRA family's adapter in PEFT's format, under transformers' module names
RUN_DIR/hf/        the merged model with its tokenizer (transformers loads it, launch/export_gguf.py converts it)
RUN_DIR/metrics.csv  per step: train loss, val loss (every val_every_n_steps and at the end), tokens/s, peak memory
RUN_DIR/result.json  options, data reports, losses before and after, timings, memory, trainable parameters

Options come from ``recipes/finetune/NAME.yaml`` (a delta over ``recipes/finetune/_base.yaml``) and ``key=value`` overrides.
The loss is cross-entropy over the model's logits with ignore_index for prompts and padding.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from slmtrain.adapt.data import IGNORE_INDEX, Batch, evaluation_batches, read_examples, split_examples, training_batches
from slmtrain.adapt.methods import (
    ADAPTER_METHODS, METHODS, LoraOptions, add_adapters, dequantize_base, quantize_frozen_base, save_hf_adapter,
    stored_bytes,
)
from slmtrain.adapt.mezo import MezoOptions, ZerothOrder
from slmtrain.config import DECLARATIONS_DIR, UserError, build, check_choice, load_declaration, merge, require
from slmtrain.eval import document_prefix_id

RECIPES_DIR = DECLARATIONS_DIR / "recipes" / "finetune"  # apart from the training recipes
BASE_RECIPE = "_base"
# Starting learning rates: the usual ranges for AdamW full fine-tuning, LoRA, and MeZO (Malladi et al. use 1e-6 to
# 1e-5 for all weights and larger rates on adapters). Small random test models want larger ones.
DEFAULT_LR = {"full": 1e-4, "lora": 2e-3, "dora": 2e-3, "qlora": 2e-3, "mezo": 1e-5, "mezo_lora": 1e-4}


@dataclass
class TrainerOptions:
    max_steps: int = 100  # optimizer steps (zeroth-order: updates, each over mezo.samples perturbations)
    val_every_n_steps: int = 25  # held-out loss every N steps, and always before the first and after the last

    def __post_init__(self) -> None:
        require(self.max_steps > 0, "max_steps", f"must be positive, got {self.max_steps}")
        require(self.val_every_n_steps > 0, "val_every_n_steps", f"must be positive, got {self.val_every_n_steps}")


@dataclass
class FinetuneOptions:
    model: str  # anything load_model takes: run directory, checkpoint, Hugging Face directory, preset
    data: str | None = None  # training JSONL: text | prompt + completion | messages records
    method: Literal["full", "lora", "dora", "qlora", "mezo", "mezo_lora", "all"] = "lora"  # all: plan=true only
    run_dir: str | None = None  # outputs; default runs/finetune/METHOD
    val_data: str | None = None  # held-out JSONL; default: a seeded val_fraction of data
    val_fraction: float = 0.1  # share of data held out when val_data is not given
    seq_len: int = 256  # tokens per sequence; longer records are cut (and counted as truncated)
    micro_batch: int = 4  # sequences per step
    lr: float | None = None  # None: DEFAULT_LR of the method
    weight_decay: float = 0.0  # AdamW's, first-order methods only
    seed: int = 0  # data order, held-out split, MeZO's perturbation seeds
    lora: LoraOptions = field(default_factory=LoraOptions)  # rank, alpha, dropout, target_modules
    mezo: MezoOptions = field(default_factory=MezoOptions)  # epsilon, samples
    trainer: TrainerOptions = field(default_factory=TrainerOptions)  # max_steps, val_every_n_steps
    threads: int | None = None  # torch CPU threads; None: torch's default
    plan: bool = False  # print the memory planner's predictions instead of training
    hardware: str = "host"  # planner: a slmtrain.hardware profile, or host (measured here)
    format: Literal["table", "json"] = "table"  # planner output

    def __post_init__(self) -> None:
        from slmtrain.hardware import profile_names

        require(self.seq_len > 0, "seq_len", f"must be positive, got {self.seq_len}")
        require(self.micro_batch > 0, "micro_batch", f"must be positive, got {self.micro_batch}")
        require(0 < self.val_fraction < 1, "val_fraction", f"must be in (0, 1), got {self.val_fraction}")
        require(self.lr is None or self.lr > 0, "lr", f"must be positive, got {self.lr}")
        check_choice("hardware", self.hardware, profile_names())
        if not self.plan:
            require(self.method != "all", "method", "all is for plan=true; training takes one of "
                                                    + ", ".join(METHODS))
            require(self.data is not None, "data", "required: data=FILE.jsonl (or plan=true)")

    @property
    def learning_rate(self) -> float:
        return DEFAULT_LR[self.method] if self.lr is None else self.lr

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path("runs") / "finetune" / self.method


def load_options(overrides: dict[str, Any], usage: str = "") -> FinetuneOptions:
    """``recipe=NAME`` (recipes/NAME.yaml) or the base recipe, merged with the other overrides."""
    overrides = dict(overrides)
    recipe = overrides.pop("recipe", BASE_RECIPE)
    if "max_steps" in overrides:  # the short spelling of trainer.max_steps
        overrides = merge(overrides, {"trainer": {"max_steps": overrides.pop("max_steps")}})
    return build(FinetuneOptions, merge(load_declaration("recipe", str(recipe), RECIPES_DIR), overrides), usage=usage)


# ----------------------------------------------------------------------------------------------------- the loop
def batch_loss(model: nn.Module, batch: Batch, reduction: str = "mean") -> torch.Tensor:
    logits = model(batch.inputs)
    return F.cross_entropy(logits.flatten(0, 1).float(), batch.targets.flatten(), ignore_index=IGNORE_INDEX,
                           reduction=reduction)


@torch.no_grad()
def mean_loss(model: nn.Module, batches: list[Batch]) -> float:
    was_training = model.training
    model.eval()
    total = sum(float(batch_loss(model, b, "sum")) for b in batches)
    model.train(was_training)
    return total / sum(b.target_tokens for b in batches)


def prepare(model: nn.Module, method: str, lora: LoraOptions) -> nn.Module:
    """The model as the method trains it: every weight (full, mezo), or a peft wrapper whose adapters alone train."""
    check_choice("method", method, METHODS)
    if method not in ADAPTER_METHODS:
        return model.requires_grad_(True)
    wrapped = add_adapters(model, lora, dora=method == "dora")
    if method == "qlora":
        quantize_frozen_base(wrapped)
    return wrapped


def frozen_bytes(model: nn.Module) -> int:
    return sum(stored_bytes(p) for p in dict.fromkeys(model.parameters()) if not p.requires_grad)


def finetune(options: FinetuneOptions) -> dict[str, Any]:
    from slmtrain.artifacts import load_model
    from slmtrain.hardware import peak_memory
    from slmtrain.model.formats.hf import export_hf

    if options.threads:
        torch.set_num_threads(options.threads)
    started = time.perf_counter()
    loaded = load_model(options.model)
    tokenizer = loaded.tokenizer
    if tokenizer is None:
        raise UserError(f"{loaded.source} has no tokenizer: fine-tuning on text needs one")
    examples, train_report = read_examples(options.data, tokenizer, options.seq_len)
    if options.val_data:
        train, (val, val_report) = examples, read_examples(options.val_data, tokenizer, options.seq_len)
    else:
        (train, val), val_report = split_examples(examples, options.val_fraction, options.seed), None
    for report in (train_report, val_report):
        if report is not None:
            print(f"{report.path}: {report.summary()}")
    torch.manual_seed(options.seed)
    model = prepare(loaded.model, options.method, options.lora).train()
    trainable = [p for p in dict.fromkeys(model.parameters()) if p.requires_grad]
    zeroth_order = options.method.startswith("mezo")
    if zeroth_order:
        optimizer = ZerothOrder(model, options.mezo, options.learning_rate, options.seed)
    else:
        optimizer = torch.optim.AdamW(trainable, lr=options.learning_rate, weight_decay=options.weight_decay)
    pad_id = document_prefix_id(tokenizer)
    val_batches = evaluation_batches(val, options.micro_batch, pad_id)
    batches = training_batches(train, options.micro_batch, pad_id, options.seed)
    run_dir = options.run_path
    run_dir.mkdir(parents=True, exist_ok=True)
    setup_seconds = time.perf_counter() - started

    val_before = mean_loss(model, val_batches)
    rows, train_started, tokens = [], time.perf_counter(), 0
    for step in range(1, options.trainer.max_steps + 1):
        batch = next(batches)
        step_started = time.perf_counter()
        if zeroth_order:
            loss = optimizer.step(lambda: batch_loss(model, batch))
        else:
            optimizer.zero_grad(set_to_none=True)
            loss_tensor = batch_loss(model, batch)
            loss_tensor.backward()
            optimizer.step()
            loss = float(loss_tensor.detach())
        tokens += batch.tokens
        last = step == options.trainer.max_steps
        val_loss = mean_loss(model, val_batches) if last or step % options.trainer.val_every_n_steps == 0 else None
        rows.append({"step": step, "train_loss": loss, "val_loss": val_loss,
                     "tokens_per_s": batch.tokens / (time.perf_counter() - step_started),
                     "peak_memory_bytes": peak_memory(torch.device("cpu"))[0]})
    train_seconds = time.perf_counter() - train_started
    with (run_dir / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    frozen = frozen_bytes(model)
    if options.method in ADAPTER_METHODS:
        save_hf_adapter(model, loaded.model.config, options.lora, options.method == "dora", run_dir / "adapter",
                        base=str(options.model))
        if options.method == "qlora":
            dequantize_base(model)
        merged = model.merge_and_unload()
    else:
        merged = model
    export_hf(merged.eval(), run_dir / "hf", tokenizer, bos_id=pad_id, eos_id=tokenizer.eos_id)
    peak, peak_kind = peak_memory(torch.device("cpu"))
    result = {
        "method": options.method, "model": loaded.source, "steps": options.trainer.max_steps,
        "lr": options.learning_rate, "val_loss_before": val_before, "val_loss_after": rows[-1]["val_loss"],
        "train_loss_last": rows[-1]["train_loss"], "trainable_params": sum(p.numel() for p in trainable),
        "frozen_weight_bytes": frozen, "setup_seconds": setup_seconds, "train_seconds": train_seconds,
        "seconds_per_step": train_seconds / options.trainer.max_steps, "tokens_per_s": tokens / train_seconds,
        "peak_memory_bytes": peak, "peak_memory_kind": peak_kind,
        "data": {"train": train_report.as_dict(), "val": val_report.as_dict() if val_report else None,
                 "train_examples": len(train), "val_examples": len(val)},
        "outputs": {"hf": str(run_dir / "hf"),
                    "adapter": str(run_dir / "adapter") if options.method in ADAPTER_METHODS else None},
        "options": asdict(options),
    }
    (run_dir / "result.json").write_text(json.dumps(result, indent=2))
    return result

