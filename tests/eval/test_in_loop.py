"""Benchmarks during training: scored at the right steps, logged, plotted, and neither the data order nor an exact
resume is disturbed."""

from __future__ import annotations

import csv

import pytest
from lightning.pytorch.callbacks import Callback

from slmtrain.orchestrate import train_recipe
from slmtrain.train.callbacks import read_metrics
from tests.conftest import tiny_recipe
from tests.eval.eval_helpers import FIXTURES

EVAL = {"tasks": [str(FIXTURES / "piqa-mini.jsonl"), str(FIXTURES / "arc-mini.jsonl")], "every_n_steps": 4,
        "limit": 3}


def rows(run_dir):
    with open(run_dir / "downstream.csv", newline="") as f:
        return list(csv.DictReader(f))


def losses(run_dir):
    return [(r["step"], r["train_loss"]) for r in read_metrics(run_dir / "metrics.csv") if r["train_loss"]]


@pytest.fixture(scope="module")
def evaluated_run(shards, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("in_loop") / "run"
    train_recipe(tiny_recipe(shards, run_dir, eval=EVAL, budget__tokens=512 * 10, loggers=["csv", "tensorboard"]))
    return run_dir


def test_scored_every_n_steps_and_at_the_last_with_the_training_metrics(evaluated_run):
    written = rows(evaluated_run)
    assert sorted({int(r["step"]) for r in written}) == [4, 8, 10]  # every 4 steps, and the last (10)
    assert {(r["task"], r["metric"]) for r in written} == {
        (task, metric) for task in ("piqa-mini", "arc-mini") for metric in ("acc", "acc_norm", "bpb")}
    assert all(0 < float(r["value"]) for r in written if r["metric"] == "bpb")
    assert (evaluated_run / "downstream.png").stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(evaluated_run / "tensorboard")).Reload()
    assert [e.step for e in events.Scalars("downstream/arc-mini/bpb")] == [4, 8, 10]


def test_training_is_the_same_with_and_without_it(evaluated_run, shards, tmp_path):
    train_recipe(tiny_recipe(shards, tmp_path / "plain", budget__tokens=512 * 10))
    assert losses(tmp_path / "plain") == losses(evaluated_run)


class StopAt(Callback):
    """What GracefulStop does on Ctrl-C: checkpoint this step, end the run."""

    def __init__(self, step: int, checkpoint):
        self.step, self.checkpoint = step, checkpoint

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.checkpoint, weights_only=False)
            trainer.should_stop = True


def test_a_resumed_run_logs_the_same_values(evaluated_run, shards, tmp_path, monkeypatch):
    from slmtrain.train import run as run_module

    config = tiny_recipe(shards, tmp_path / "run", eval=EVAL, budget__tokens=512 * 10, loggers=["csv", "tensorboard"])
    original = run_module.train
    stop = StopAt(5, tmp_path / "run" / run_module.LAST_CHECKPOINT)
    monkeypatch.setattr(run_module, "train", lambda c, resume=False, callbacks=(): original(
        c, resume=resume, callbacks=[*callbacks, stop]))
    train_recipe(config)
    monkeypatch.setattr(run_module, "train", original)
    assert sorted({int(r["step"]) for r in rows(tmp_path / "run")}) == [4]
    with open(tmp_path / "run" / "downstream.csv", "a") as f:  # what a run killed after step 8's scoring leaves
        f.write("8,piqa-mini,acc,0.123\n")
    train_recipe(config, resume=True)
    assert rows(tmp_path / "run") == rows(evaluated_run)
    assert losses(tmp_path / "run") == losses(evaluated_run)
