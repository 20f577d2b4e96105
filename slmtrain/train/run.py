"""A training run: the plan (size, token budget, steps, FLOPs, GPU-hours) and the Lightning fit that carries it out."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slmtrain.config import ConfigError, UserError
from slmtrain.model.config import ModelConfig
from slmtrain.hardware import gpu_bf16_peaks
from slmtrain.train.config import TrainConfig

LAST_CHECKPOINT = "checkpoints/last.ckpt"


def world_size(trainer_args: dict[str, Any]) -> int:
    """Processes the Trainer will start (devices x nodes), known before it exists: the batch arithmetic needs it."""
    devices = trainer_args.get("devices", "auto")
    accelerator = trainer_args.get("accelerator", "auto")
    if isinstance(devices, (list, tuple)):
        count = len(devices)
    elif isinstance(devices, int) and devices > 0:
        count = devices
    elif accelerator != "cpu" and torch.cuda.is_available():
        count = torch.cuda.device_count()
    else:
        count = 1
    return count * int(trainer_args.get("num_nodes", 1))


def gradient_accumulation(config: TrainConfig, world: int) -> int:
    per_pass = config.batch.micro_batch * config.data.seq_len * world
    if config.batch.tokens % per_pass:
        lower = max(per_pass, config.batch.tokens // per_pass * per_pass)
        raise ConfigError(
            "batch.tokens",
            f"{config.batch.tokens} is not a multiple of micro_batch * seq_len * world = {per_pass}; "
            f"valid nearby values: {lower}, {lower + per_pass}",
        )
    return config.batch.tokens // per_pass


def plan(config: TrainConfig, model_config: ModelConfig | None = None) -> dict[str, Any]:
    """What the run will do, with the reasoning behind its token budget."""
    from slmtrain.scaling.budget import choose_tokens

    mc = model_config or config.model_config
    budget = config.budget
    decision = choose_tokens(
        budget.policy, mc.params(), tokens=budget.tokens, tokens_per_param=budget.tokens_per_param,
        inference_tokens=budget.inference_tokens, law=budget.law,
    )
    reasoning = list(decision.reasoning)
    max_steps = config.trainer.get("max_steps")
    if max_steps is not None and int(max_steps) > 0:
        steps = int(max_steps)
        reasoning.append(f"trainer.max_steps={steps} overrides the budget's {math.ceil(decision.tokens / config.batch.tokens)} steps")
    else:
        steps = max(1, math.ceil(decision.tokens / config.batch.tokens))
    tokens = steps * config.batch.tokens
    flops = mc.train_flops_per_token(config.data.seq_len) * tokens
    peak = gpu_bf16_peaks().get(config.gpu)
    if peak is None:
        raise ConfigError("gpu", f"unknown GPU {config.gpu!r}; valid choices: {', '.join(gpu_bf16_peaks())}")
    return {
        "name": config.name,
        "params": mc.params(),
        "non_embedding_params": mc.non_embedding_params(),
        "tokens": tokens,
        "tokens_per_param": tokens / mc.params(),
        "steps": steps,
        "batch_tokens": config.batch.tokens,
        "seq_len": config.data.seq_len,
        "train_flops_per_token": mc.train_flops_per_token(config.data.seq_len),
        "train_flops": flops,
        "gpu": config.gpu,
        "mfu_assumed": config.mfu_assumed,
        "gpu_hours": flops / (peak * config.mfu_assumed) / 3600,
        "budget_policy": budget.policy,
        "budget_reasoning": reasoning,
    }


def format_plan(p: dict[str, Any]) -> str:
    lines = [
        f"run            {p['name']}",
        f"parameters     {p['params']:,} ({p['non_embedding_params']:,} non-embedding)",
        f"token budget   {p['tokens']:,.0f} ({p['tokens_per_param']:.1f} tokens/param, policy {p['budget_policy']})",
        f"steps          {p['steps']:,} x {p['batch_tokens']:,} tokens (seq_len {p['seq_len']})",
        f"compute        {p['train_flops']:.3e} FLOPs ({p['train_flops_per_token']:.3e}/token)",
        f"estimate       {p['gpu_hours']:,.1f} {p['gpu']} GPU-hours at {p['mfu_assumed']:.0%} MFU",
        "budget reasoning:",
        *(f"  - {line}" for line in p["budget_reasoning"]),
    ]
    return "\n".join(lines)


def train(config: TrainConfig, resume: bool = False, callbacks: list | None = None) -> dict[str, Any]:
    """Fit the model on the shards; checkpoint, export and sample at the end. Returns the final metrics.
    ``callbacks``: extra Lightning callbacks (the library's users' own)."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    from slmtrain.train.callbacks import MetricsLogger
    from slmtrain.train.checkpoint import AtomicCheckpointIO
    from slmtrain.train.data import ShardsDataModule, ensure_shards
    from slmtrain.train.module import LanguageModel, NonFiniteLossError
    from slmtrain.train.parallel import compile_model, lightning_strategy

    run_dir = config.run_path
    ckpt_path = run_dir / LAST_CHECKPOINT
    if resume and not ckpt_path.is_file():
        raise UserError(f"ckpt=last: no checkpoint at {ckpt_path} to resume from")
    if not resume and ckpt_path.is_file():
        raise UserError(f"{run_dir} already holds a run: resume it with ckpt=last, or choose another run_dir=")
    accelerator = str(config.trainer.get("accelerator", "auto"))
    if config.strategy == "fsdp" and (accelerator == "cpu" or not torch.cuda.is_available()):
        raise ConfigError("strategy", "fsdp needs GPUs (Lightning's FSDP does not run on CPU); valid choices on CPU: auto, ddp")
    ensure_shards(config.data)
    model_config = config.model_config
    world = world_size(config.trainer)
    accumulate = gradient_accumulation(config, world)
    datamodule = ShardsDataModule(config.data, config.batch.micro_batch, accumulate, config.seed)
    if datamodule.vocab_size > model_config.vocab_size:
        raise ConfigError("model.vocab_size",
                          f"{model_config.vocab_size} is smaller than the shards' vocabulary ({datamodule.vocab_size})")
    the_plan = plan(config, model_config)
    steps = the_plan["steps"]
    pl.seed_everything(config.seed, workers=True, verbose=False)
    module = LanguageModel(config, model_config, total_steps=steps, eos_id=datamodule.eos_id)
    if config.compile:
        compile_model(module.model, config.strategy)

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "plan.json").write_text(json.dumps(the_plan, indent=2))
    # train_config.json, not config.json: a folder with config.json is a Hugging Face model to load_model
    (run_dir / "train_config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
    loggers = _loggers(config, run_dir)
    metrics = MetricsLogger(run_dir / "metrics.csv", config.log_every_n_steps, config.batch.tokens,
                            model_config.train_flops_per_token(config.data.seq_len),
                            progress=bool(config.trainer.get("enable_progress_bar", True)))
    checkpoints = ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True, save_top_k=0,
                                  every_n_train_steps=config.ckpt_every_n_steps)
    trainer_args = {
        "max_steps": steps,
        "max_epochs": -1,
        "precision": resolve_precision(config.precision, accelerator),
        "accumulate_grad_batches": accumulate,
        "val_check_interval": config.val_every_n_steps * accumulate,
        "check_val_every_n_epoch": None,
        "log_every_n_steps": config.log_every_n_steps,
        "num_sanity_val_steps": 0,
        "use_distributed_sampler": False,  # the StreamSampler splits the stream across ranks itself
        "deterministic": False,
        "benchmark": False,
        **{k: v for k, v in config.trainer.items() if k != "max_steps"},
        "enable_progress_bar": False,  # MetricsLogger's bar counts optimizer steps, with tokens/s and ETA
    }
    trainer = pl.Trainer(
        default_root_dir=run_dir, logger=loggers or False, callbacks=[metrics, checkpoints, *(callbacks or [])],
        strategy=lightning_strategy(config.strategy), plugins=[AtomicCheckpointIO()], **trainer_args,
    )
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path if resume else None, weights_only=True)
    except NonFiniteLossError as e:
        kept = f"the last good checkpoint is {ckpt_path}" if ckpt_path.is_file() else "no checkpoint was written yet"
        raise UserError(f"{e}; training stopped, {kept} (nan_policy=skip skips such batches)") from None
    trainer.save_checkpoint(ckpt_path)
    result = {"steps": trainer.global_step, "tokens": trainer.global_step * config.batch.tokens}
    validation = trainer.validate(module, datamodule=datamodule, verbose=False, weights_only=True)
    if validation and "val_loss" in validation[0]:  # none without a val split or val_samples
        result["val_loss"] = float(validation[0]["val_loss"])
        result["val_unigram_entropy"] = unigram_entropy(datamodule.val_split)
    if trainer.is_global_zero:
        _finish(config, module, datamodule.meta, run_dir, result)
    return result


def unigram_entropy(split) -> float:
    """Entropy (nats/token) of the split's token frequencies: the loss of the best model that ignores context."""
    counts = np.zeros(split.vocab_size, dtype=np.int64)
    for shard in split.tokens:
        counts += np.bincount(shard, minlength=split.vocab_size)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def _finish(config: TrainConfig, module, meta: dict[str, Any], run_dir: Path, result: dict[str, Any]) -> None:
    """HF export with the tokenizer, a few samples printed, the result recorded."""
    from slmtrain.model.formats.hf import export_hf
    from slmtrain.tokenizer import Tokenizer

    model = module.model.float().eval()
    tokenizer_dir = Path(meta["tokenizer_model"]).parent
    tokenizer = Tokenizer.load(tokenizer_dir) if tokenizer_dir.is_dir() else None
    # Every document in the shards follows an EOS, so EOS is the token this model knows as "a document starts".
    if config.export_hf:
        export_hf(model, run_dir / "hf", tokenizer, bos_id=meta["eos_id"], eos_id=meta["eos_id"])
        result["hf_export"] = str(run_dir / "hf")
    samples = []
    if tokenizer is not None:
        generator = torch.Generator().manual_seed(config.seed)
        device = next(model.parameters()).device
        for prompt in ("The", "def ", "In this section")[: config.samples]:
            ids = torch.tensor([[meta["eos_id"], *tokenizer.encode(prompt)]], device=device)
            out = model.generate(ids, config.sample_tokens, temperature=0.8, top_k=50, eos_id=meta["eos_id"],
                                 generator=generator)
            samples.append(tokenizer.decode(out[0, ids.shape[1]:].tolist()))
            print(f"--- sample: {prompt!r}\n{prompt}{samples[-1]}\n")
    result["samples"] = samples
    if "val_loss" in result:
        print(f"validation loss {result['val_loss']:.3f} nats/token vs {result['val_unigram_entropy']:.3f} for the "
              "best context-free (unigram) model")
    (run_dir / "result.json").write_text(json.dumps(result, indent=2))


def resolve_precision(setting: str, accelerator: str) -> str:
    """``auto``: bf16 autocast where the hardware computes bf16 natively (recent GPUs; CPUs with AVX512-BF16 or
    AMX, where it is ~1.8x faster for small models), else fp32."""
    if setting != "auto":
        return setting
    if accelerator != "cpu" and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    native_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or getattr(
        torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return "bf16-mixed" if native_bf16 else "32-true"


def _loggers(config: TrainConfig, run_dir: Path) -> list:
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    loggers: list = []  # "csv" is MetricsLogger's RUN_DIR/metrics.csv, always written
    if "tensorboard" in config.loggers:
        loggers.append(TensorBoardLogger(run_dir, name="tensorboard", version=""))
    if "wandb" in config.loggers:
        import os

        offline = not os.environ.get("WANDB_API_KEY")  # no key: log locally, sync later with `wandb sync`
        loggers.append(WandbLogger(project=config.wandb_project, name=config.name, save_dir=str(run_dir), offline=offline))
    return loggers
