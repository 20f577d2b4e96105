"""Compilation and distribution, applied from the outside to an unchanged model (as classic torchtitan does)."""

from __future__ import annotations

import os
from typing import Any

from slmtrain.model.transformer import Block, Transformer


def compile_model(model: Transformer, strategy: str) -> None:
    """torch.compile in place, parameter names unchanged (checkpoints and the HF export do not see it): the whole
    forward with its fused loss, whose backward AOT autograd compiles too; under FSDP, which wraps each block, every
    block instead (one graph reused by all layers, the FSDP wrappers between them)."""
    if strategy == "fsdp":
        for block in model.blocks:
            block.compile()
    else:
        model.compile()


def lightning_strategy(name: str) -> Any:
    """``auto`` (single device, or Lightning's choice), ``ddp``, or ``fsdp`` sharding at transformer-block granularity.
    Multi-node runs need nothing more: Lightning reads SLURM's or torchrun's environment."""
    if name == "auto":
        return "auto"
    if name == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(find_unused_parameters=False)
    from lightning.pytorch.strategies import FSDPStrategy

    return FSDPStrategy(auto_wrap_policy={Block}, activation_checkpointing_policy=None, sharding_strategy="FULL_SHARD")


def launched_rank() -> int:
    """The process's global rank as torchrun (``RANK``) or srun (``SLURM_PROCID``) set it, before Lightning starts;
    0 for a single process. Only rank 0 speaks on the terminal, so a job's log reads as a single run's."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))
