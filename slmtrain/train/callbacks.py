"""Callbacks: per-step metrics (loss, lr, grad norm, tokens, tokens/s, MFU; an MoE model's router statistics) to
RUN_DIR/metrics.csv and the loggers."""

from __future__ import annotations

import csv
import signal
import threading
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from slmtrain.hardware import CpuPeak, cuda_peak_flops

METRIC_COLUMNS = ("step", "train_loss", "val_loss", "lr", "grad_norm", "tokens_seen", "tokens_per_s", "mfu")
# An MoE model's columns (LanguageModel.moe_metrics); moe_expert_load is a JSON list per layer of per-expert fractions.
MOE_COLUMNS = ("moe_aux_loss", "moe_z_loss", "moe_load_cv", "moe_router_entropy", "moe_dropped_tokens",
               "moe_expert_load")


class PeakFlops:
    """The reference MFU is measured against: the GPU's data-sheet peak, or this CPU's measured matmul peak in the
    dtype the matmuls run in (raised by any faster rate observed later, so MFU never reads above 100%)."""

    def __init__(self, device: torch.device, dtype: torch.dtype, world_size: int):
        self.world_size = world_size
        self.cpu = None if device.type == "cuda" else CpuPeak(dtype)
        self.per_device = (cuda_peak_flops(torch.cuda.get_device_name(device))[0] if self.cpu is None
                           else self.cpu.flops)

    def mfu(self, achieved_flops: float) -> float:
        if self.cpu is not None:
            return self.cpu.utilisation(achieved_flops / self.world_size)
        return achieved_flops / (self.per_device * self.world_size)


class GracefulStop(pl.Callback):
    """SIGINT / SIGTERM (Ctrl-C, a scheduler's preemption) end the run after the current optimizer step, with a
    checkpoint of that step, so nothing done is lost and the resume is exact. A second signal aborts at once."""

    def __init__(self, checkpoint: Path):
        self.checkpoint = checkpoint
        self.signal_name = ""
        self.previous: dict[int, Any] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for number in (signal.SIGINT, signal.SIGTERM):
                self.previous[number] = signal.signal(number, self._request)

    def _request(self, number: int, frame: Any) -> None:
        self.signal_name = signal.Signals(number).name
        signal.signal(number, self.previous.get(number, signal.SIG_DFL))  # the next one is not deferred
        print(f"\n{self.signal_name}: stopping after this step (send it again to abort)", flush=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.signal_name and (batch_idx + 1) % trainer.accumulate_grad_batches == 0:
            trainer.save_checkpoint(self.checkpoint, weights_only=False)
            trainer.should_stop = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        self.previous = {}


def quiet_lightning(log_file: Path) -> None:
    """Lightning's informational logging (devices, model summary notices, checkpoint paths) and Python warnings
    (Lightning's hints about srun, dataloader workers, deprecations inside its own code) go to the run's log file;
    the terminal keeps the progress bar, errors and results. ``verbose=true`` leaves everything on the terminal."""
    import logging

    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.captureWarnings(True)
    for name in ("lightning.pytorch", "lightning.fabric", "lightning", "py.warnings"):
        logger = logging.getLogger(name)
        logger.handlers = [h for h in logger.handlers if not isinstance(h, logging.FileHandler)] + [handler]
        for h in logger.handlers:
            if not isinstance(h, logging.FileHandler):
                h.setLevel(logging.WARNING)
        logger.propagate = False


class MetricsLogger(pl.Callback):
    """One CSV row per logged optimizer step (and per validation), and a progress bar in optimizer steps with
    loss, tokens/s and ETA. On resume, rows after the restored step are dropped so that the file reads as if the
    run had never stopped."""

    def __init__(self, path: Path, every_n_steps: int, tokens_per_step: int, flops_per_token: float, progress: bool):
        self.path, self.every_n_steps = path, every_n_steps
        self.tokens_per_step, self.flops_per_token = tokens_per_step, flops_per_token
        self.progress, self.bar = progress, None
        self.peak: PeakFlops | None = None
        self.step_losses: list[torch.Tensor] = []
        self.step_started = 0.0
        self.step_lr = float("nan")
        self.last_val_step = -1
        self.columns = METRIC_COLUMNS

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dtype = torch.bfloat16 if "bf16" in str(trainer.precision) else torch.float32
        self.peak = PeakFlops(pl_module.device, dtype, trainer.world_size)
        self.columns = METRIC_COLUMNS + (MOE_COLUMNS if pl_module.model.moe_layers() else ())
        if trainer.is_global_zero:
            self._truncate_after(trainer.global_step)
            if self.progress:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=trainer.max_steps, initial=trainer.global_step, unit="step", dynamic_ncols=True)
        self.step_started = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.bar is not None:
            self.bar.close()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx % trainer.accumulate_grad_batches == 0:  # the lr this step trains at (the scheduler moves on
            self.step_lr = trainer.optimizers[0].param_groups[0]["lr"]  # before on_train_batch_end)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if outputs:  # None or {} when a non-finite batch was skipped
            self.step_losses.append(outputs["lm_loss"])  # without the balancing losses
        if (batch_idx + 1) % trainer.accumulate_grad_batches != 0:
            return
        step = trainer.global_step
        now = time.perf_counter()
        tokens_per_s = self.tokens_per_step / max(now - self.step_started, 1e-9)
        self.step_started = now
        losses, self.step_losses = self.step_losses, []
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
        if step % self.every_n_steps and step != trainer.max_steps:
            return
        mfu = self.peak.mfu(self.flops_per_token * tokens_per_s)
        pl_module.log_dict({"tokens_per_s": tokens_per_s, "mfu": mfu}, on_step=True, on_epoch=False)
        moe_scalars = {k: float(v) for k, v in pl_module.moe_metrics.items() if not isinstance(v, str)}
        if moe_scalars:
            pl_module.log_dict(moe_scalars, on_step=True, on_epoch=False)
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        row = {
            "step": step,
            "train_loss": float(torch.stack(losses).mean()) if losses else "",  # empty: the step's batch was skipped
            "lr": self.step_lr,
            "grad_norm": float(metrics["grad_norm"]) if "grad_norm" in metrics else "",
            "tokens_seen": step * self.tokens_per_step,
            "tokens_per_s": round(tokens_per_s, 1),
            "mfu": round(mfu, 5),
            **pl_module.moe_metrics,
        }
        self._append(row)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{row['train_loss']:.3f}" if losses else "skipped",
                                 tok_s=f"{tokens_per_s:,.0f}", mfu=f"{mfu:.1%}", refresh=False)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = trainer.global_step
        if trainer.sanity_checking or not trainer.is_global_zero or "val_loss" not in trainer.callback_metrics:
            return
        if step == self.last_val_step:  # the final validation repeats the fit's last one
            return
        self.last_val_step = step
        self.step_started = time.perf_counter()  # the next step's tokens/s should not include validation
        self._append({"step": step, "val_loss": float(trainer.callback_metrics["val_loss"]),
                      "tokens_seen": step * self.tokens_per_step})

    def _append(self, row: dict) -> None:
        new = not self.path.is_file()
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns)
            if new:
                writer.writeheader()
            writer.writerow(row)

    def _truncate_after(self, step: int) -> None:
        if not self.path.is_file():
            return
        with self.path.open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(self.path)


def read_metrics(path: str | Path) -> list[dict[str, str]]:
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))
