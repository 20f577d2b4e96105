"""Compilation and distribution, applied from the outside to an unchanged model (as classic torchtitan does)."""

from __future__ import annotations

from typing import Any

from slmtrain.model.transformer import Block, Transformer


def compile_blocks(model: Transformer) -> None:
    """torch.compile each transformer block in place: one compiled graph reused by every layer, parameter names
    unchanged (so checkpoints and the HF export do not see the compilation)."""
    for block in model.blocks:
        block.compile()


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
