"""The LightningModule: next-token loss (fused with the head, slmtrain.model.loss, plus an MoE model's balancing
losses), fused AdamW with weight-decay groups, the lr schedule, the non-finite-loss guard, and an MoE model's per-step
router statistics and loss-free bias update."""

from __future__ import annotations

import dataclasses
import json
import math
import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from slmtrain.model.config import ModelConfig
from slmtrain.model.moe import MoE
from slmtrain.model.transformer import Transformer
from slmtrain.train.config import TrainConfig
from slmtrain.train.data import document_ids
from slmtrain.train.schedules import lr_multiplier


class NonFiniteLossError(RuntimeError):
    pass


def adamw_implementation(device: torch.device) -> dict[str, bool]:
    """One fused kernel for all parameters where torch has one for the device (on CPU 5x faster than the per-tensor
    loop: 1.9 vs 10 ms per step for 2.4M parameters, 38 vs 250 ms for 35M), else the multi-tensor (foreach) path."""
    return {"fused": True} if device.type in ("cuda", "cpu", "mps", "xpu") else {"foreach": True}


class RouterStats:
    """The MoE layers' router statistics over one optimizer step (its micro-batches summed)."""

    def __init__(self) -> None:
        self.load: torch.Tensor | None = None  # (layers, experts) tokens routed to each expert
        self.assignments = 0  # token-expert assignments the routers were asked for: tokens x top_k x layers
        self.aux_loss = self.z_loss = self.entropy = torch.zeros(())  # sums of the layers' means, detached
        self.batches = 0

    def add(self, layers: list[MoE], tokens: int) -> None:
        load = torch.stack([layer.load for layer in layers])
        self.load = load if self.load is None else self.load + load
        self.assignments += sum(tokens * layer.top_k for layer in layers)
        self.aux_loss = self.aux_loss + torch.stack([layer.aux_loss for layer in layers]).detach().mean().cpu()
        self.z_loss = self.z_loss + torch.stack([layer.z_loss for layer in layers]).detach().mean().cpu()
        self.entropy = self.entropy + torch.stack([layer.router_entropy for layer in layers]).mean().cpu()
        self.batches += 1

    def metrics(self, load: torch.Tensor) -> dict[str, float | int | str]:
        """``load``: this step's load summed over all ranks. Per-expert fractions of each layer's tokens, their
        coefficient of variation (std / mean, 0 when perfectly balanced, mean over layers), the assignments no
        expert computed (0: routing is dropless), and the rank-0 means of the losses and router entropy."""
        fractions = load / load.sum(dim=1, keepdim=True)
        cv = (load.std(dim=1, correction=0) / load.mean(dim=1)).mean()
        return {"moe_aux_loss": round(float(self.aux_loss) / self.batches, 6),
                "moe_z_loss": round(float(self.z_loss) / self.batches, 6), "moe_load_cv": round(float(cv), 6),
                "moe_router_entropy": round(float(self.entropy) / self.batches, 6),
                "moe_dropped_tokens": self.assignments - int(self.load.sum()),
                "moe_expert_load": json.dumps([[round(f, 4) for f in row] for row in fractions.tolist()])}


class LanguageModel(pl.LightningModule):
    def __init__(self, config: TrainConfig, model_config: ModelConfig, total_steps: int, eos_id: int):
        super().__init__()
        self.config, self.model_config = config, model_config
        self.total_steps, self.eos_id = total_steps, eos_id
        self.model = Transformer(model_config)
        self.nan_skips = 0
        self.router_stats = RouterStats()
        self.moe_metrics: dict[str, float | int | str] = {}  # the last optimizer step's, for MetricsLogger
        # What a checkpoint needs to rebuild the model without this code's config objects (plain types only, so
        # checkpoints load with torch.load(weights_only=True)).
        self.save_hyperparameters(
            {"model_config": dataclasses.asdict(model_config), "train_config": dataclasses.asdict(config)}
        )

    def forward(self, input_ids: torch.Tensor, doc_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids, doc_ids=doc_ids)

    def loss(self, batch: torch.Tensor) -> torch.Tensor:
        inputs, targets = batch[:, :-1], batch[:, 1:]
        doc_ids = document_ids(inputs, self.eos_id) if self.config.data.document_mask else None
        return self.model(inputs, doc_ids=doc_ids, targets=targets)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> dict[str, torch.Tensor] | None:
        loss = self.loss(batch)
        if not torch.isfinite(loss):
            if self.config.nan_policy == "stop" or self.nan_skips >= self.config.max_nan_skips:
                raise NonFiniteLossError(
                    f"non-finite loss ({loss.item()}) at step {self.global_step}"
                    + (f" after {self.nan_skips} skipped batches" if self.nan_skips else "")
                )
            self.nan_skips += 1
            self.print(f"warning: non-finite loss at step {self.global_step}, batch skipped ({self.nan_skips})")
            return None
        # No prog_bar=True here or below: Lightning turns progress-bar values into Python numbers after every batch,
        # a host sync per step (MetricsLogger draws the bar and reads the values only at logging steps).
        self.log("train_loss", loss, on_step=True, on_epoch=False, sync_dist=False)
        if moe_layers := self.model.moe_layers():
            self.router_stats.add(moe_layers, tokens=batch[:, :-1].numel())
        return {"loss": loss + self.model.moe_loss(), "lm_loss": loss.detach()}

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)  # runs the step's last micro-batch (the closure) and the update
        stats, self.router_stats = self.router_stats, RouterStats()
        if stats.load is None:
            return
        load = self.trainer.strategy.reduce(stats.load, reduce_op="sum")  # every rank's tokens: identical biases
        for layer, layer_load in zip(self.model.moe_layers(), load):
            layer.update_router_bias(layer_load)
        self.moe_metrics = stats.metrics(load)

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.log("val_loss", self.loss(batch), on_step=False, on_epoch=True, sync_dist=True)

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, param in self.model.named_parameters():
            # Matrices of the blocks decay; norms, biases and the (tied) embedding do not.
            (decay if param.ndim >= 2 and not name.startswith(("embed", "pos_embed")) else no_decay).append(param)
        opt = self.config.optim
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": opt.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=opt.lr, betas=(opt.beta1, opt.beta2), eps=opt.eps, **adamw_implementation(self.device),
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_multiplier(step, self.total_steps, self.config.schedule, opt.min_lr_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # Clip here so that the pre-clip norm is logged; an FSDP-wrapped module clips across its shards itself.
        max_norm = self.config.optim.grad_clip or math.inf
        clip = getattr(self.trainer.strategy.model, "clip_grad_norm_", None)
        grad_norm = clip(max_norm) if clip else torch.nn.utils.clip_grad_norm_(self.parameters(), max_norm)
        self.log("grad_norm", grad_norm, on_step=True, on_epoch=False)

    # RNG state travels with the checkpoint so that a resumed run continues bit for bit.
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rng"] = {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state()[1].tolist(),
            "python": list(random.getstate()[1]),
        }
        checkpoint["nan_skips"] = self.nan_skips

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        rng = checkpoint.get("rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            state = np.random.get_state()
            np.random.set_state((state[0], np.asarray(rng["numpy"], dtype=np.uint32), *state[2:]))
            python_state = random.getstate()
            random.setstate((python_state[0], tuple(rng["python"]), python_state[2]))
        self.nan_skips = int(checkpoint.get("nan_skips", 0))

