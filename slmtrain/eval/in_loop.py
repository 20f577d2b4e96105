"""Benchmarks during training, as OLMo-core's downstream evaluators: every ``eval.every_n_steps`` optimizer steps
(and at the last step) the model scores the first ``eval.limit`` items of each task of ``eval.tasks``. The figures
(acc, acc_norm, bits per byte of the gold answers; exact match for generation tasks) go to the run's loggers
(TensorBoard, wandb) under ``downstream/TASK/METRIC``, to ``RUN_DIR/downstream.csv`` and to its plot
``RUN_DIR/downstream.png``.

The evaluation reads no training data, draws no random numbers from torch's generators and leaves the model in the
mode it found it, so the training data order and an exact resume are untouched; on resume the rows of steps after
the checkpoint (written before the interruption) are dropped, so a resumed run's file equals an uninterrupted one's.
Every rank evaluates (a sharded model needs them all); rank 0 writes.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from slmtrain.config import UserError
from slmtrain.eval.suites import expand
from slmtrain.eval.tasks import Task, load_task
from slmtrain.train.config import DownstreamConfig

COLUMNS = ("step", "task", "metric", "value")


class DownstreamEvaluator(pl.Callback):
    def __init__(self, config: DownstreamConfig, run_dir: Path):
        self.config = config
        self.path = run_dir / "downstream.csv"
        self.run_dir = run_dir
        self.requests = expand(config.tasks)  # names checked now, before any training
        self.tasks: list[tuple[Task, int]] = []
        self.tokenizer: Any = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from slmtrain.artifacts import run_tokenizer

        self.tokenizer = run_tokenizer(self.run_dir)
        if self.tokenizer is None:
            raise UserError(f"{self.run_dir} has no tokenizer: in-loop evaluation (eval.tasks) needs one")
        self.tasks = [(load_task(r.task), r.shots if r.shots is not None else self.config.shots)
                      for r in self.requests]
        if trainer.is_global_zero and self.path.is_file():  # a resume: rows past the checkpoint never happened
            kept = [row for row in read_rows(self.path) if int(row["step"]) <= trainer.global_step]
            write_rows(self.path, kept)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # not the end of an optimizer step
        step = trainer.global_step
        if step % self.config.every_n_steps == 0 or step >= (trainer.max_steps or 0) > 0:
            self.evaluate(trainer, pl_module.model, step)

    def evaluate(self, trainer: pl.Trainer, model: torch.nn.Module, step: int) -> None:
        from slmtrain.eval.scoring import evaluate_task

        if self.path.is_file() and any(int(r["step"]) == step for r in read_rows(self.path)):
            return  # already scored at this step (the last step can also be a multiple of every_n_steps)
        was_training = model.training
        model.eval()
        rows = []
        try:
            for task, shots in self.tasks:
                result = evaluate_task(model, self.tokenizer, task, shots, self.config.limit)
                rows += [{"step": step, "task": result.task, "metric": m, "value": v}
                         for m, v in result.metrics.items()]
        finally:
            model.train(was_training)
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            logger.log_metrics({f"downstream/{r['task']}/{r['metric']}": r["value"] for r in rows}, step=step)
        write_rows(self.path, [*(read_rows(self.path) if self.path.is_file() else []), *rows])
        plot_downstream(self.path, self.run_dir / "downstream.png")


def read_rows(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Written whole to a temporary file and renamed, so an interruption leaves the old file or the new one."""
    partial = path.with_suffix(".csv.partial")
    with open(partial, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    partial.replace(path)


def plot_downstream(table: Path, out: Path) -> Path:
    """One panel per metric, a line per task, against the training step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_rows(table)
    metrics = sorted({r["metric"] for r in rows if not r["metric"].endswith("_micro")})
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.5), squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        for task in sorted({r["task"] for r in rows if r["metric"] == metric}):
            points = [(int(r["step"]), float(r["value"])) for r in rows if r["task"] == task and r["metric"] == metric]
            axis.plot(*zip(*points), "o-", label=task)
        axis.set(xlabel="step", title=metric)
        axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
