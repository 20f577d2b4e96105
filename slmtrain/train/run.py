"""A training run: the plan (size, token budget, steps, FLOPs, GPU-hours) and the Lightning fit that carries it out."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slmtrain.artifacts import (CHECKPOINTS, HF_EXPORT, LAST_CHECKPOINT, RUN_TOKENIZER, TRAIN_CONFIG, TokenizerInfo,
                                good_checkpoints, run_tokenizer, verify_checkpoint)
from slmtrain.config import ConfigError, UserError
from slmtrain.model.config import ModelConfig
from slmtrain.hardware import gpu_bf16_peaks
from slmtrain.train.config import TrainConfig, flatten



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


@dataclass(frozen=True)
class Plan:
    """What a run will do, with the reasoning behind its token budget (RUN_DIR/plan.json, ``dry_run=json``)."""

    name: str
    params: int
    non_embedding_params: int
    tokens: int
    tokens_per_param: float
    steps: int
    batch_tokens: int
    seq_len: int
    train_flops_per_token: float
    train_flops: float
    gpu: str
    mfu_assumed: float
    gpu_hours: float
    budget_policy: str
    budget_reasoning: list[str]
    sources: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # a mixed run's use of each source

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def format(self) -> str:
        return "\n".join([
            f"run            {self.name}",
            f"parameters     {self.params:,} ({self.non_embedding_params:,} non-embedding)",
            f"token budget   {self.tokens:,.0f} ({self.tokens_per_param:.1f} tokens/param, policy {self.budget_policy})",
            f"steps          {self.steps:,} x {self.batch_tokens:,} tokens (seq_len {self.seq_len})",
            f"compute        {self.train_flops:.3e} FLOPs ({self.train_flops_per_token:.3e}/token)",
            f"estimate       {self.gpu_hours:,.1f} {self.gpu} GPU-hours at {self.mfu_assumed:.0%} MFU",
            "budget reasoning:",
            *(f"  - {line}" for line in self.budget_reasoning),
            *(["sources (weight, tokens drawn, epochs):"] if self.sources else []),
            *(f"  - {u['name']}: {u['weight']:.3g}, {u['tokens']:,} tokens, {u['epochs']:.2f} epochs of "
              f"{u['samples']:,} samples" for u in self.sources),
        ])


def plan(config: TrainConfig, model_config: ModelConfig | None = None) -> Plan:
    """What the run will do, with the reasoning behind its token budget."""
    from slmtrain.scaling.budget import choose_tokens

    gradient_accumulation(config, world_size(config.trainer))  # a batch the run would refuse, refused in a dry run too
    mc = model_config or config.model_config
    budget = config.budget
    decision = choose_tokens(
        budget.policy, mc.params(), tokens=budget.tokens, tokens_per_param=budget.tokens_per_param,
        inference_tokens=budget.inference_tokens, law=budget.law,
    )
    reasoning = list(decision.reasoning)
    max_steps = config.trainer.get("max_steps")
    if max_steps is not None and max_steps != -1:
        steps = int(max_steps)
        reasoning.append(f"trainer.max_steps={steps} overrides the budget's {math.ceil(decision.tokens / config.batch.tokens)} steps")
    else:
        steps = max(1, math.ceil(decision.tokens / config.batch.tokens))
    tokens = steps * config.batch.tokens
    flops = mc.train_flops_per_token(config.data.seq_len) * tokens
    peak = gpu_bf16_peaks().get(config.gpu)
    if peak is None:
        raise ConfigError("gpu", f"unknown GPU {config.gpu!r}; valid choices: {', '.join(gpu_bf16_peaks())}")
    sources = []
    if config.data.sources:
        world = world_size(config.trainer)
        logger = mixture_logger(config, config.run_path, steps, gradient_accumulation(config, world), world,
                                resumed=False)[0]
        sources = [dataclasses.asdict(use) for use in logger.planned]
    return Plan(config.name, mc.params(), mc.non_embedding_params(), tokens, tokens / mc.params(), steps,
                config.batch.tokens, config.data.seq_len, mc.train_flops_per_token(config.data.seq_len), flops,
                config.gpu, config.mfu_assumed, flops / (peak * config.mfu_assumed) / 3600, budget.policy, reasoning,
                sources)


def train(config: TrainConfig, resume: bool | str | Path = False, callbacks: list | None = None) -> dict[str, Any]:
    """Fit the model on the shards; checkpoint, export and sample at the end. Returns the final metrics.
    ``resume``: True (or "last") for RUN_DIR/checkpoints/last.ckpt, or a checkpoint path of the run.
    ``callbacks``: extra Lightning callbacks (the library's users' own). SIGINT/SIGTERM stop the run after the
    current optimizer step with a checkpoint (:class:`RunInterrupted` says how to resume)."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    from slmtrain.train.callbacks import GracefulStop, MetricsLogger, quiet_lightning
    from slmtrain.train.checkpoint import AtomicCheckpointIO
    from slmtrain.train.data import ShardsDataModule, require_shards
    from slmtrain.train.module import LanguageModel, NonFiniteLossError
    from slmtrain.train.parallel import compile_model, lightning_strategy

    run_dir = config.run_path
    last = run_dir / LAST_CHECKPOINT
    resume_from = None if resume is False else last if resume in (True, "last") else Path(resume)
    if resume_from is not None and not resume_from.is_file():
        raise UserError(f"ckpt={resume}: no checkpoint at {resume_from} to resume from")
    if resume_from is None and last.is_file():
        raise UserError(f"{run_dir} already holds a run: resume it with ckpt=last, or choose another run_dir=")
    if resume_from is not None:
        verify_checkpoint(resume_from)
        refuse_changed_settings(config, run_dir)
    accelerator = str(config.trainer.get("accelerator", "auto"))
    if config.strategy == "fsdp" and (accelerator == "cpu" or not torch.cuda.is_available()):
        raise ConfigError("strategy", "fsdp needs GPUs (Lightning's FSDP does not run on CPU); valid choices on CPU: auto, ddp")
    require_shards(config.data)
    model_config = config.model_config
    if config.export_hf:  # refused now rather than after the training
        from slmtrain.model.formats.hf import hf_architecture

        try:
            hf_architecture(model_config)
        except ConfigError as e:
            raise ConfigError("export_hf", f"{e.message}; train with export_hf=false or change the model") from None
    world = world_size(config.trainer)
    accumulate = gradient_accumulation(config, world)
    datamodule = ShardsDataModule(config.data, config.batch.micro_batch, accumulate, config.seed)
    if datamodule.vocab_size > model_config.vocab_size:
        raise ConfigError("model.vocab_size",
                          f"{model_config.vocab_size} is smaller than the shards' vocabulary ({datamodule.vocab_size})")
    the_plan = plan(config, model_config)
    steps = the_plan.steps
    # refuses over-repeated sources, and sources changed on disk since the run being resumed, now
    mixture = mixture_logger(config, run_dir, steps, accumulate, world, resumed=resume_from is not None)
    pl.seed_everything(config.seed, workers=True, verbose=False)
    module = LanguageModel(config, model_config, total_steps=steps, eos_id=datamodule.eos_id)
    if config.compile:
        compile_model(module.model, config.strategy)

    write_run_identity(config, datamodule.meta, run_dir, the_plan, resumed=resume_from is not None)
    if not config.verbose:
        quiet_lightning(run_dir / "train.log")
    loggers = _loggers(config, run_dir)
    metrics = MetricsLogger(run_dir / "metrics.csv", config.log_every_n_steps, config.batch.tokens,
                            model_config.train_flops_per_token(config.data.seq_len),
                            progress=bool(config.trainer.get("enable_progress_bar", True)))
    # Step checkpoints beside last.ckpt: if one file is damaged, an older intact one is there to resume from.
    checkpoints = ModelCheckpoint(dirpath=run_dir / CHECKPOINTS, filename="step{step:06d}", auto_insert_metric_name=False,
                                  monitor="step", mode="max", save_top_k=config.keep_checkpoints, save_last=True,
                                  every_n_train_steps=config.ckpt_every_n_steps)
    stop = GracefulStop(last)
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
        default_root_dir=run_dir, logger=loggers or False, callbacks=[metrics, checkpoints, stop, *mixture, *(callbacks or [])],
        strategy=lightning_strategy(config.strategy), plugins=[AtomicCheckpointIO()], **trainer_args,
    )
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    except NonFiniteLossError as e:
        good = good_checkpoints(run_dir / CHECKPOINTS)
        kept = f"the last good checkpoint is {good[0]}" if good else "no checkpoint was written yet"
        raise UserError(f"{e}; training stopped, {kept} (nan_policy=skip skips such batches)") from None
    if stop.signal_name:
        raise RunInterrupted(stop.signal_name, trainer.global_step, last)
    trainer.save_checkpoint(last, weights_only=False)  # the full state: optimizer, schedule, loops
    result = {"steps": trainer.global_step, "tokens": trainer.global_step * config.batch.tokens}
    validation = trainer.validate(module, datamodule=datamodule, verbose=False, weights_only=True)
    if validation and "val_loss" in validation[0]:  # none without a val split or val_samples
        result["val_loss"] = float(validation[0]["val_loss"])
        result["val_unigram_entropy"] = unigram_entropy(datamodule.val_split)
    if trainer.is_global_zero:
        _finish(config, module, run_dir, result)
    return result


def mixture_logger(config: TrainConfig, run_dir: Path, steps: int, accumulate: int, world: int,
                   resumed: bool) -> list:
    """The sources' logger for a mixed run (none for one shards folder), after refusing a run that would repeat a
    source more than ``data.max_epochs`` times, or resume on sources whose sample counts changed since it began."""
    from slmtrain.data.shards import load_meta
    from slmtrain.train.mixture import MixtureLogger

    data = config.data
    if not data.sources:
        return []
    sizes = []
    for name, folder in data.sources.items():
        if not (Path(folder) / "meta.json").is_file():
            raise ConfigError(f"data.sources.{name}", f"no token shards at {folder} (meta.json missing)")
        tokens = int(load_meta(folder)["splits"].get("train", {}).get("tokens", 0))
        if tokens <= data.seq_len:
            raise ConfigError(f"data.sources.{name}", f"{folder}/train holds {tokens} tokens: too few for one "
                                                      f"sample of seq_len={data.seq_len}")
        sizes.append((tokens - 1) // data.seq_len)
    samples_per_step = config.batch.micro_batch * accumulate * world
    logger = MixtureLogger(run_dir, list(data.sources), sizes, list(data.source_weights.values()),
                           samples_per_step, data.seq_len, steps, config.log_every_n_steps)
    for use in logger.planned:
        if use.epochs > data.max_epochs:
            raise ConfigError("data.max_epochs", f"source {use.name} would be read {use.epochs:.2f} times "
                              f"({use.draws:,} samples drawn of its {use.samples:,}, weight {use.weight:.3g}, "
                              f"{steps:,} steps); the limit is {data.max_epochs:g}: add data, lower its weight or "
                              f"the budget, or raise data.max_epochs")
    if resumed and logger.path.is_file():
        before = {u["name"]: u["samples"] for u in json.loads(logger.path.read_text())["planned"]}
        for use in logger.planned:
            if before.get(use.name) != use.samples:
                raise ConfigError(f"data.sources.{use.name}", f"changed on disk since the run began ({before.get(use.name)} "
                                  f"samples of seq_len {data.seq_len} then, {use.samples} now): the resumed stream "
                                  "would not be the same")
    return [logger]


class RunInterrupted(UserError):
    """SIGINT/SIGTERM stopped the run after a completed optimizer step, whose checkpoint was written."""

    def __init__(self, signal_name: str, step: int, checkpoint: Path):
        self.step, self.checkpoint = step, checkpoint
        super().__init__(f"{signal_name}: stopped after step {step}; checkpoint written to {checkpoint}. Resume with "
                         f"the same command and ckpt=last")


# Settings a resumed run may change: they do not alter what is trained or in which order.
# a source's folder may move (its contents are checked against the run's mixture.json); evaluation reads no data
RESUMABLE_PREFIXES = ("data.sources.", "eval.")
RESUMABLE_CHANGES = {
    "name", "run_dir", "loggers", "wandb_project", "log_every_n_steps", "val_every_n_steps", "ckpt_every_n_steps",
    "keep_checkpoints", "samples", "sample_tokens", "export_hf", "gpu", "mfu_assumed", "verbose", "compile",
    "resume_with_changes", "nan_policy", "max_nan_skips", "data.shards", "data.curated", "data.build",
    "data.tokenizer", "data.tokenizer_dir", "data.num_workers", "data.val_samples", "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
}


def refuse_changed_settings(config: TrainConfig, run_dir: Path) -> None:
    """Resuming with other schedule-, data- or model-affecting settings would silently train something else."""
    saved_path = run_dir / TRAIN_CONFIG
    if config.resume_with_changes:
        return
    if not saved_path.is_file():
        raise UserError(f"{saved_path} is missing, so the resumed run's settings cannot be checked: restore it, or "
                        "pass resume_with_changes=true to resume with the settings given now")
    saved, current = flatten(json.loads(saved_path.read_text())), flatten(dataclasses.asdict(config))
    changed = sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k)
                     and k not in RESUMABLE_CHANGES and not k.startswith(RESUMABLE_PREFIXES))
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
        raise ConfigError(changed[0], f"differs from the run being resumed ({details}); resume with the run's "
                                      "settings, or pass resume_with_changes=true to accept the change")


def write_run_identity(config: TrainConfig, meta: dict[str, Any], run_dir: Path, the_plan: Plan,
                       resumed: bool) -> None:
    """What makes RUN_DIR self-contained: the resolved config, the plan, and a copy of the shards' tokenizer with
    the special ids the model trains with. A resumed run checks that the shards use the run's tokenizer."""
    from slmtrain.data.shards import shards_tokenizer
    from slmtrain.tokenizer import MODEL_FILE, Tokenizer

    folder = run_dir / RUN_TOKENIZER
    source = shards_tokenizer(meta, config.data.shards).model_file  # refused when missing or changed since
    if resumed:
        if not (folder / MODEL_FILE).is_file():
            raise UserError(f"{folder / MODEL_FILE} is missing, so the shards cannot be checked against the run's "
                            "tokenizer: restore the run's tokenizer folder")
        if Tokenizer.load(folder).sha256 != meta["tokenizer_sha256"]:
            raise UserError(f"{config.data.shards} was tokenized with another tokenizer than the run's ({folder})")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        folder.mkdir(exist_ok=True)
        for file in source.parent.iterdir():
            if file.is_file():
                shutil.copy2(file, folder / file.name)
        TokenizerInfo.for_shards(meta).save(folder)
        (run_dir / "plan.json").write_text(json.dumps(the_plan.to_dict(), indent=2))
        (run_dir / TRAIN_CONFIG).write_text(json.dumps(dataclasses.asdict(config), indent=2))
    except OSError as e:
        raise UserError(f"cannot write the run directory {run_dir}: {e.strerror or e}") from None


def unigram_entropy(split) -> float:
    """Entropy (nats/token) of the split's token frequencies: the loss of the best model that ignores context."""
    counts = np.zeros(split.vocab_size, dtype=np.int64)
    for shard in split.tokens:
        counts += np.bincount(shard, minlength=split.vocab_size)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def _finish(config: TrainConfig, module, run_dir: Path, result: dict[str, Any]) -> None:
    """HF export with the run's tokenizer, a few samples printed, the result recorded."""
    from slmtrain.model.formats.hf import export_hf

    model = module.model.float().eval()
    tokenizer = run_tokenizer(run_dir)
    if config.export_hf:
        export_hf(model, run_dir / HF_EXPORT, tokenizer.inner, bos_id=tokenizer.info.document_start_id,
                  eos_id=tokenizer.info.eos_id)
        result["hf_export"] = str(run_dir / HF_EXPORT)
    samples = []
    if tokenizer is not None:
        generator = torch.Generator().manual_seed(config.seed)
        device = next(model.parameters()).device
        for prompt in ("The", "def ", "In this section")[: config.samples]:
            ids = torch.tensor([[tokenizer.bos_id, *tokenizer.encode(prompt)]], device=device)
            out = model.generate(ids, config.sample_tokens, temperature=0.8, top_k=50, eos_id=tokenizer.eos_id,
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
