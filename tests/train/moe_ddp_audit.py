"""Run by test_moe_ddp_ranks_keep_identical_router_biases: a 2-process DDP (gloo, CPU) MoE run with loss-free
balancing that records each rank's router biases at the end. A plain script: Lightning's DDP launcher re-runs it."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[2])

import torch  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402

from slmtrain.train.run import train  # noqa: E402
from tests.train.test_moe_train import moe_recipe  # noqa: E402


class RecordBiases(Callback):
    def __init__(self, out_dir: Path):
        self.out_dir = out_dir

    def on_train_end(self, trainer, pl_module):
        biases = torch.stack([layer.router_bias for layer in pl_module.model.moe_layers()])
        torch.save(biases, self.out_dir / f"bias_rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    shards, run_dir = Path(sys.argv[1]), Path(sys.argv[2])
    config = moe_recipe(shards, run_dir, strategy="ddp", batch__micro_batch=2, budget__tokens=512 * 6,
                        trainer={"accelerator": "cpu", "devices": 2, "enable_progress_bar": False,
                                 "enable_model_summary": False})
    run_dir.mkdir(parents=True, exist_ok=True)
    train(config, callbacks=[RecordBiases(run_dir)])
