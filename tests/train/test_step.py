"""The training step: no host syncs between logging steps beyond the non-finite-loss guard, a fused AdamW, the fused
loss in the module."""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import Callback
from torch.utils._python_dispatch import TorchDispatchMode

from slmtrain.train.module import LanguageModel
from slmtrain.train.run import train
from tests.conftest import tiny_recipe

# What reading a tensor's value on the host dispatches to (.item(), float(), bool(), int())
HOST_READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default}


class HostReads(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func in HOST_READS
        return func(*args, **(kwargs or {}))


class HostReadsPerStep(Callback):
    """Host reads of tensor values during each optimizer step (counted from one step's end to the next)."""

    def __init__(self) -> None:
        self.mode = HostReads()
        self.per_step: list[int] = []
        self.last = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self.mode.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches == 0:
            self.per_step.append(self.mode.count - self.last)
            self.last = self.mode.count

    def on_train_end(self, trainer, pl_module) -> None:
        self.mode.__exit__(None, None, None)


def test_steps_between_logging_read_nothing_but_the_nonfinite_guard(shards, tmp_path) -> None:
    counter = HostReadsPerStep()
    config = tiny_recipe(shards, tmp_path / "run", log_every_n_steps=4, val_every_n_steps=100, ckpt_every_n_steps=100,
                         samples=0, export_hf=False, budget__tokens=512 * 8)
    train(config, callbacks=[counter])
    accumulate = 2  # 512 tokens per step, micro-batches of 4 x 64
    logging_steps = {4, 8}
    for step, reads in enumerate(counter.per_step, start=1):
        if step in logging_steps:
            assert reads > accumulate  # the loss and grad norm are read for metrics.csv
        else:
            assert reads == accumulate, f"step {step}: {reads} host reads"  # one isfinite(loss) per micro-batch


def test_adamw_is_fused_and_the_module_loss_is_the_models_fused_loss(shards, tmp_path) -> None:
    config = tiny_recipe(shards, tmp_path / "run")
    module = LanguageModel(config, config.model_config, total_steps=10, eos_id=0)
    assert module.configure_optimizers()["optimizer"].defaults["fused"] is True
    batch = torch.randint(0, 512, (2, 65), generator=torch.Generator().manual_seed(0))
    logits = module(batch[:, :-1])
    plain = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
    torch.testing.assert_close(module.loss(batch), plain, rtol=1e-6, atol=0)
