"""Run by test_ddp_data_order: a 2-process DDP (gloo, CPU) run that records every sample each rank trains on.

Lightning's DDP launcher starts rank 1 by re-running this script, so it must run as a plain script."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[2])

from lightning.pytorch.callbacks import Callback  # noqa: E402

from slmtrain.train.run import train  # noqa: E402
from tests.conftest import tiny_recipe  # noqa: E402


class RecordSamples(Callback):
    def __init__(self, out_dir: Path):
        self.out_dir = out_dir

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        with (self.out_dir / f"seen_rank{trainer.global_rank}.txt").open("a") as f:
            for row in batch:
                f.write(hashlib.sha1(row.numpy().tobytes()).hexdigest() + "\n")


if __name__ == "__main__":
    shards, run_dir = Path(sys.argv[1]), Path(sys.argv[2])
    config = tiny_recipe(
        shards, run_dir, strategy="ddp", batch__micro_batch=2, budget__tokens=512 * 8, export_hf=False, samples=0,
        trainer={"accelerator": "cpu", "devices": 2, "enable_progress_bar": False, "enable_model_summary": False},
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    train(config, callbacks=[RecordSamples(run_dir)])
