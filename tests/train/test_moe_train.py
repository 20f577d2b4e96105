"""Training a Mixture-of-Experts model: the balancing losses train, the router statistics reach metrics.csv, the
loss-free bias moves and is restored exactly on resume, and two DDP ranks keep identical biases."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from slmtrain.artifacts import load_model
from slmtrain.train.callbacks import MOE_COLUMNS, read_metrics
from slmtrain.train.run import train
from tests.conftest import tiny_recipe
from tests.train.test_train import train_losses

REPO = Path(__file__).resolve().parents[2]
EXPERTS = 4


def moe_recipe(shards: Path, run_dir: Path, **overrides: Any):
    """The tiny recipe with a 2-layer MoE (4 experts, top-2) balanced by all three methods at once, 2 micro-batches
    per step. No HF export: a loss-free routing bias has no transformers equivalent."""
    moe = {"experts": EXPERTS, "top_k": 2, "aux_loss_coef": 0.01, "z_loss_coef": 0.001, "loss_free_bias": True,
           "bias_update_rate": 0.01}
    model = {"preset": "tiny-moe", "vocab_size": 512, "max_seq_len": 64, "moe": moe}
    return tiny_recipe(shards, run_dir, **{"model": model, "batch__micro_batch": 4, "export_hf": False, "samples": 0,
                                           **overrides})


def router_biases(run_dir: Path) -> torch.Tensor:
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    return torch.stack([state[f"model.blocks.{i}.mlp.router_bias"] for i in range(2)])


class StopAt(Callback):
    """Stops the run with an error once the given optimizer step is done (after the checkpoint before it)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("stopped on purpose")


def test_moe_trains_logs_router_statistics_and_resumes_exactly(shards, tmp_path):
    straight = tmp_path / "straight"
    result = train(moe_recipe(shards, straight, budget__tokens=512 * 12))
    assert math.isfinite(result["val_loss"]) and result["val_loss"] < math.log(512)
    rows = [r for r in read_metrics(straight / "metrics.csv") if r["train_loss"]]
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    for row in rows:
        assert int(row["moe_dropped_tokens"]) == 0
        load = json.loads(row["moe_expert_load"])
        assert len(load) == 2 and all(len(layer) == EXPERTS and sum(layer) == pytest.approx(1, abs=1e-3) for layer in load)
        assert float(row["moe_load_cv"]) >= 0 and 0 < float(row["moe_router_entropy"]) <= math.log(EXPERTS) + 1e-6
        assert float(row["moe_aux_loss"]) > 0 and float(row["moe_z_loss"]) > 0
    assert set(MOE_COLUMNS) <= set(rows[0])
    biases = router_biases(straight)
    assert biases.abs().sum() > 0  # 12 updates moved them; each step moves each bias by exactly +-0.01 or 0
    assert torch.allclose((biases / 0.01).round(), biases / 0.01, atol=1e-4)

    stopped = tmp_path / "stopped"
    with pytest.raises(RuntimeError, match="stopped on purpose"):
        train(moe_recipe(shards, stopped, budget__tokens=512 * 12), callbacks=[StopAt(6)])  # checkpoint at 4
    train(moe_recipe(shards, stopped, budget__tokens=512 * 12), resume=True)
    assert train_losses(stopped) == train_losses(straight)
    assert torch.equal(router_biases(stopped), biases)
    loaded = load_model(stopped).model  # the checkpoint rebuilds the MoE model, biases included
    assert torch.equal(torch.stack([layer.router_bias for layer in loaded.moe_layers()]), biases)


def test_moe_ddp_ranks_keep_identical_router_biases(shards, tmp_path):
    run_dir = tmp_path / "ddp"
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "train" / "moe_ddp_audit.py"), str(shards),
                           str(run_dir)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rank0, rank1 = (torch.load(run_dir / f"bias_rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0.abs().sum() > 0 and torch.equal(rank0, rank1)
    assert torch.equal(router_biases(run_dir), rank0)


def test_a_model_with_no_hf_equivalent_is_refused_before_training_when_it_would_be_exported(shards, tmp_path):
    from slmtrain.config import ConfigError

    with pytest.raises(ConfigError, match=r"export_hf: no Hugging Face architecture for moe.loss_free_bias .*; "
                                          r"train with export_hf=false"):
        train(moe_recipe(shards, tmp_path / "run", export_hf=True))
    assert not (tmp_path / "run" / "checkpoints").exists()
