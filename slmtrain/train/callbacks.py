"""Callbacks: per-step metrics (loss, lr, grad norm, tokens, tokens/s, MFU) to RUN_DIR/metrics.csv and the loggers."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

from slmtrain.hardware import CpuPeak, cuda_peak_flops

METRIC_COLUMNS = ("step", "train_loss", "val_loss", "lr", "grad_norm", "tokens_seen", "tokens_per_s", "mfu")


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

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dtype = torch.bfloat16 if "bf16" in str(trainer.precision) else torch.float32
        self.peak = PeakFlops(pl_module.device, dtype, trainer.world_size)
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
            self.step_losses.append(outputs["loss"].detach() * trainer.accumulate_grad_batches)
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
            writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
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
            writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(self.path)


def read_metrics(path: str | Path) -> list[dict[str, str]]:
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))
