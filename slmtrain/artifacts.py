"""What a model artifact is and how to load it: ``load_model`` for every way a model is named (a preset with random
weights, a Hugging Face directory, an slmtrain run directory or training checkpoint), and safe checkpoint reading.
Evaluation, export, fine-tuning, serving and benchmarks take any of them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
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
    source: str  # what was loaded, for people: "hf PATH", "preset NAME (random)", ...
    random_weights: bool = False  # a preset built with seed 0: its speed is real, its scores would mean nothing


class HFTokenizer:
    """A transformers tokenizer behind the small interface slmtrain uses (no special tokens added by encode)."""

    def __init__(self, path: Path, bos_id: int | None = None):
        from transformers import AutoTokenizer

        try:
            self.inner = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
        except Exception as e:  # transformers and tokenizers raise many kinds for a damaged file; one line for all
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"{path}: its tokenizer cannot be loaded ({reason})") from None
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


# The run-directory layout, in one place: a run carries its tokenizer, special ids, resolved config and checkpoints.
RUN_TOKENIZER = "tokenizer"  # RUN_DIR/tokenizer/: the tokenizer's files and SPECIAL_TOKENS
SPECIAL_TOKENS = "special_tokens.json"
TRAIN_CONFIG = "train_config.json"  # not config.json: a folder with config.json is a Hugging Face model
CHECKPOINTS = "checkpoints"
LAST_CHECKPOINT = f"{CHECKPOINTS}/last.ckpt"
HF_EXPORT = "hf"


@dataclass(frozen=True)
class TokenizerInfo:
    """The special ids a model was trained with. HF export, GGUF export, evaluation and serving read them from
    here instead of re-deriving them."""

    vocab_size: int
    eos_id: int
    document_start_id: int  # the token every training document follows: what a prompt must start with
    bos_id: int | None = None  # the tokenizer's own BOS, which the model may never have seen
    pad_id: int | None = None

    @classmethod
    def for_shards(cls, meta: dict[str, Any]) -> TokenizerInfo:
        """slmtrain's shards join documents with EOS, so every document the model saw followed an EOS."""
        bos = meta.get("bos_id")
        return cls(int(meta["vocab_size"]), int(meta["eos_id"]), int(meta["eos_id"]),
                   bos if isinstance(bos, int) and bos >= 0 else None)

    def save(self, folder: Path) -> None:
        (folder / SPECIAL_TOKENS).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, folder: Path) -> TokenizerInfo:
        path = folder / SPECIAL_TOKENS
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as e:
            raise UserError(f"{path}: not a readable special-token record ({e})") from None


def load_model(spec: str | Path, dtype: torch.dtype = torch.float32) -> LoadedModel:
    path = Path(spec)
    if not path.exists():
        if str(spec) in presets.PRESETS:
            torch.manual_seed(0)
            return LoadedModel(Transformer(presets.get(str(spec))).to(dtype).eval(), None, f"preset {spec} (random)",
                               random_weights=True)
        raise UserError(f"model not found: {spec} is neither a path nor a preset ({', '.join(presets.names())})")
    if path.suffix == ".gguf" and path.is_file():
        return LoadedModel(*load_gguf(path, dtype), f"gguf {path}")
    if path.is_file() and path.suffix != ".ckpt":
        raise UserError(f"{path}: not a readable slmtrain checkpoint or model file (expected a Hugging Face or run "
                        "directory, a .ckpt or a .gguf file)")
    if path.is_dir() and (path / "config.json").is_file():
        config = read_hf_config(path)
        return LoadedModel(load_hf(path, dtype), _hf_tokenizer(path, config.get("bos_token_id")), f"hf {path}")
    if path.is_dir():  # an slmtrain run directory: its export if it has one, else its last checkpoint
        if (path / HF_EXPORT / "config.json").is_file():
            return load_model(path / HF_EXPORT, dtype)
        if not (path / LAST_CHECKPOINT).is_file():
            raise UserError(f"{path}: neither a Hugging Face directory (config.json) nor an slmtrain run "
                            f"({LAST_CHECKPOINT})")
        path = path / LAST_CHECKPOINT
    model, _ = model_from_checkpoint(path, dtype)
    run_dir = path.parent.parent if path.parent.name == CHECKPOINTS else path.parent
    return LoadedModel(model, run_tokenizer(run_dir), f"checkpoint {path}")


def _hf_tokenizer(path: Path, bos_id: int | None) -> TextTokenizer | None:
    """The directory's tokenizer; the model's config.json has the last word on the document-start token (slmtrain
    exports name it as BOS)."""
    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        return None
    return HFTokenizer(path, bos_id if isinstance(bos_id, int) else None)


def run_tokenizer(run_dir: Path) -> RunTokenizer | None:
    """The tokenizer a run carries (RUN_DIR/tokenizer), None for a run without one."""
    folder = run_dir / RUN_TOKENIZER
    if not (folder / SPECIAL_TOKENS).is_file():
        return None
    from slmtrain.tokenizer import Tokenizer

    return RunTokenizer(Tokenizer.load(folder), TokenizerInfo.load(folder))


class RunTokenizer:
    """A run's SentencePiece tokenizer as its model saw it: ``bos_id`` is the document-start token."""

    def __init__(self, inner, info: TokenizerInfo):
        self.inner, self.info = inner, info
        self.bos_id = info.document_start_id
        self.eos_id = info.eos_id
        self.processor = inner.processor

    def encode(self, text: str) -> list[int]:
        return self.inner.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.inner.decode(ids)

    def save_hf(self, out_dir: str | Path) -> None:
        self.inner.save_hf(out_dir)


# --------------------------------------------------------------------------------------------------------------
# Checkpoints: a sha256 record beside each file (CHECKSUM_SUFFIX) holds the hashes of its current and previous
# content; it is replaced before the checkpoint itself, so a crash between the two renames leaves a pair that
# still verifies. Zeroed or truncated bytes match neither and are refused.
CHECKSUM_SUFFIX = ".sha256"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def verify_checkpoint(path: Path) -> None:
    record = checksum_path(path)
    if not record.is_file():
        raise UserError(f"{path}: no checksum record ({record.name}) beside it; it cannot be verified "
                        "(copy checkpoints together with their .sha256 files)")
    if file_sha256(path) not in record.read_text().split():
        others = good_checkpoints(path.parent, exclude=path)
        offer = (f"; the newest intact checkpoint is {others[0]} (resume from it with ckpt={others[0]})"
                 if others else "; no other intact checkpoint is in that folder")
        raise UserError(f"{path} is corrupted (its sha256 matches no recorded hash){offer}")


def good_checkpoints(folder: Path, exclude: Path | None = None) -> list[Path]:
    """Intact checkpoints of a folder, newest first."""
    candidates = sorted((p for p in folder.glob("*.ckpt") if p != exclude and checksum_path(p).is_file()),
                        key=lambda p: p.stat().st_mtime, reverse=True)
    return [p for p in candidates if file_sha256(p) in checksum_path(p).read_text().split()]


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A verified checkpoint, loaded without running pickled code."""
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    verify_checkpoint(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign file: one clear line instead of an unpickling traceback
        # torch's first line only: the rest advises weights_only=False, which would run the file's code
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UserError(f"{path}: not a readable slmtrain checkpoint ({type(e).__name__}: {reason})") from None


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
