"""What a model artifact is and how to load it: ``load_model`` for every way a model is named (a preset with random
weights, a Hugging Face directory, an slmtrain run directory or training checkpoint), and safe checkpoint reading.
Evaluation, export, fine-tuning, serving and benchmarks take any of them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import sentencepiece as spm
import torch

from slmtrain.config import UserError, build
from slmtrain.model import presets
from slmtrain.model.config import ModelConfig
from slmtrain.model.formats.gguf import load_gguf
from slmtrain.model.formats.hf import load_hf, read_hf_config
from slmtrain.model.transformer import Transformer


class TextTokenizer(Protocol):
    bos_id: int | None
    eos_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


@dataclass
class LoadedModel:
    model: Transformer
    tokenizer: TextTokenizer | None
    source: str


class HFTokenizer:
    """A transformers tokenizer behind the small interface slmtrain uses (no special tokens added by encode)."""

    def __init__(self, path: Path, bos_id: int | None = None):
        from transformers import AutoTokenizer

        self.inner = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
        self.bos_id = self.inner.bos_token_id if bos_id is None else bos_id
        self.eos_id = self.inner.eos_token_id
        # slmtrain exports carry their SentencePiece model: GGUF export embeds its vocabulary from it.
        sentencepiece_file = path / "tokenizer.model"
        self.processor = spm.SentencePieceProcessor(model_file=str(sentencepiece_file)) if sentencepiece_file.is_file() else None

    def encode(self, text: str) -> list[int]:
        return self.inner.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self.inner.decode(ids, skip_special_tokens=True)

    def save_hf(self, out_dir: str | Path) -> None:
        self.inner.save_pretrained(str(out_dir))


def load_model(spec: str | Path, dtype: torch.dtype = torch.float32) -> LoadedModel:
    path = Path(spec)
    if not path.exists():
        if str(spec) in presets.PRESETS:
            torch.manual_seed(0)
            return LoadedModel(Transformer(presets.get(str(spec))).to(dtype).eval(), None, f"preset {spec} (random)")
        raise UserError(f"model not found: {spec} is neither a path nor a preset ({', '.join(presets.names())})")
    if path.suffix == ".gguf" and path.is_file():
        return LoadedModel(*load_gguf(path, dtype), f"gguf {path}")
    if path.is_dir() and (path / "config.json").is_file():
        config = read_hf_config(path)
        return LoadedModel(load_hf(path, dtype), _hf_tokenizer(path, config.get("bos_token_id")), f"hf {path}")
    if path.is_dir():  # an slmtrain run directory: its export if it has one, else its last checkpoint
        if (path / "hf" / "config.json").is_file():
            return load_model(path / "hf", dtype)
        path = path / "checkpoints" / "last.ckpt"
    model, hparams = model_from_checkpoint(path, dtype)
    return LoadedModel(model, _checkpoint_tokenizer(hparams), f"checkpoint {path}")


def _hf_tokenizer(path: Path, bos_id: int | None) -> TextTokenizer | None:
    """The directory's tokenizer; the model's config.json has the last word on the document-start token (slmtrain
    exports name EOS, which precedes every document in training)."""
    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        return None
    return HFTokenizer(path, bos_id if isinstance(bos_id, int) else None)


def _checkpoint_tokenizer(hparams: dict) -> TextTokenizer | None:
    import json

    from slmtrain.tokenizer import Tokenizer

    shards = Path(hparams.get("train_config", {}).get("data", {}).get("shards", ""))
    meta = shards / "meta.json"
    if not meta.is_file():
        return None
    folder = Path(json.loads(meta.read_text())["tokenizer_model"]).parent
    return EosPrefixedTokenizer(Tokenizer.load(folder)) if folder.is_dir() else None


class EosPrefixedTokenizer:
    """A shards tokenizer as its model saw it: documents start after an EOS, never with a BOS."""

    def __init__(self, inner):
        self.inner = inner
        self.bos_id = inner.eos_id
        self.eos_id = inner.eos_id
        self.processor = inner.processor

    def encode(self, text: str) -> list[int]:
        return self.inner.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.inner.decode(ids)

    def save_hf(self, out_dir: str | Path) -> None:
        self.inner.save_hf(out_dir)


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
