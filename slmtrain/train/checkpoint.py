"""Checkpoints: written atomically (temp file, fsync, rename: never half-written after a kill), read safely
(``torch.load(weights_only=True)``: no pickled code runs)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from slmtrain.config import UserError, build
from slmtrain.model.config import ModelConfig
from slmtrain.model.transformer import Transformer


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        atomic_torch_save(checkpoint, Path(path))

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return read_checkpoint(Path(path))


def atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with tmp.open("wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def read_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign file: one clear line instead of an unpickling traceback
        raise UserError(f"{path}: not a readable slmtrain checkpoint ({type(e).__name__}: {e})") from None


def model_from_checkpoint(path: Path, dtype: torch.dtype = torch.float32) -> tuple[Transformer, dict[str, Any]]:
    """The Transformer saved in a training checkpoint, and the checkpoint's hyper-parameters."""
    checkpoint = read_checkpoint(path)
    hparams = checkpoint.get("hyper_parameters", {})
    if "model_config" not in hparams:
        raise UserError(f"{path}: no model_config in the checkpoint (not written by slmtrain)")
    config = build(ModelConfig, hparams["model_config"])
    model = Transformer(config)
    prefix = "model."
    state = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    state = {k.replace("_orig_mod.", ""): v for k, v in state.items()}  # blocks compiled during training
    model.load_state_dict(state)
    return model.to(dtype).eval(), hparams
