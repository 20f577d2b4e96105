"""Packed training samples over token shards, in an order derived from (seed, position) alone.

Sample ``i`` of a split is the window ``tokens[i * seq_len : (i + 1) * seq_len + 1]`` (inputs plus the next-token
targets). The training stream is the concatenation of per-epoch permutations drawn from ``(seed, epoch)``; global
stream position ``g`` goes to rank ``g % world``. Resuming at optimizer step ``s`` starts the stream at
``s * samples_per_step``, so resume, several dataloader workers and several GPUs neither repeat nor skip data.
With ``data.sources`` the stream is mixed from several shard folders in the shares of ``data.mixture``
(slmtrain.train.mixture), by the same (seed, position) rule.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, Sampler

from slmtrain.config import ConfigError, UserError
from slmtrain.data.shards import TokenSplit, load_meta, open_split, verify_split
from slmtrain.train.config import DataConfig
from slmtrain.train.mixture import MixedSamples, MixtureSampler


class PackedSamples(Dataset):
    def __init__(self, split: TokenSplit, seq_len: int, name: str = "split"):
        self.split, self.seq_len = split, seq_len
        self.count = (len(split) - 1) // seq_len
        if self.count < 1:
            raise UserError(f"{name} has {len(split)} tokens: too few for one sample of seq_len={seq_len}")

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(self.split.read(index * self.seq_len, self.seq_len + 1))


class StreamSampler(Sampler[int]):
    """Indices of the global sample stream from ``start`` on, for one rank. Endless: the trainer's max_steps ends
    the run, so no loader length exists for Lightning to combine with its restored batch counters."""

    def __init__(self, num_samples: int, seed: int, start: int, rank: int = 0, world: int = 1):
        self.num_samples, self.seed, self.start = num_samples, seed, start
        self.rank, self.world = rank, world

    def __iter__(self) -> Iterator[int]:
        position = self.start + self.rank  # global stream position of this rank's next sample
        epoch, order = -1, np.empty(0, dtype=np.int64)
        while True:
            if position // self.num_samples != epoch:
                epoch = position // self.num_samples
                order = epoch_order(self.num_samples, self.seed, epoch)
            yield int(order[position % self.num_samples])
            position += self.world


def epoch_order(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(num_samples)


def document_ids(tokens: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Per-position document index within each row: a new document starts after every EOS."""
    is_eos = (tokens == eos_id).long()
    return torch.cumsum(is_eos, dim=-1) - is_eos


class ShardsDataModule(pl.LightningDataModule):
    """Train/val loaders over ``train`` and ``val`` splits; the train stream starts where the restored step says."""

    def __init__(self, config: DataConfig, micro_batch: int, accumulate: int, seed: int):
        super().__init__()
        self.config, self.micro_batch, self.accumulate, self.seed = config, micro_batch, accumulate, seed
        self.meta = load_meta(config.shards)
        self.train_split: TokenSplit | None = None
        self.val_split: TokenSplit | None = None
        self.source_splits: dict[str, TokenSplit] = {}

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def eos_id(self) -> int:
        return int(self.meta["eos_id"])

    def setup(self, stage: str | None = None) -> None:
        # The full scan (ids below the vocabulary, EOS at every document end) reads the shards once (0.15 s per
        # billion uint16 tokens from the page cache, here; from disk, the disk's read time): an id corrupted on
        # disk is then one line before the first step, not a failed gather (a device-side assert on GPUs) mid-run.
        if self.config.sources:
            self.source_splits = open_sources(self.config, self.meta)
        else:
            self.train_split = open_split(self.config.shards, "train")
            verify_split(self.train_split)
        val_tokens = self.meta["splits"].get("val", {}).get("tokens", 0)
        if val_tokens > self.config.seq_len:
            self.val_split = open_split(self.config.shards, "val")
            verify_split(self.val_split)
        elif self.config.val_samples:
            rank_zero_warn(f"{self.config.shards}/val holds {val_tokens} tokens, not one sample of seq_len="
                           f"{self.config.seq_len}: this run has no validation loss")

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        world = trainer.world_size if trainer else 1
        rank = trainer.global_rank if trainer else 0
        step = trainer.global_step if trainer else 0
        start = step * self.micro_batch * self.accumulate * world
        if self.source_splits:
            sources = self.source_datasets()
            dataset: Dataset = MixedSamples(sources)
            weights = [self.config.source_weights[name] for name in self.source_splits]
            sampler: Sampler = MixtureSampler([len(s) for s in sources], weights, self.seed, start, rank, world)
        else:
            dataset = PackedSamples(self.train_split, self.config.seq_len, f"{self.config.shards}/train")
            sampler = StreamSampler(len(dataset), self.seed, start=start, rank=rank, world=world)
        return self._loader(dataset, sampler)

    def source_datasets(self) -> list[PackedSamples]:
        return [PackedSamples(split, self.config.seq_len, f"data.sources.{name} ({self.config.sources[name]}/train)")
                for name, split in self.source_splits.items()]

    def val_dataloader(self) -> DataLoader | list:
        if self.val_split is None or self.config.val_samples == 0:
            return []
        dataset = PackedSamples(self.val_split, self.config.seq_len, f"{self.config.shards}/val")
        trainer = self.trainer
        world = trainer.world_size if trainer else 1
        rank = trainer.global_rank if trainer else 0
        # The same samples on every rank count, in equal shares: the mean of rank means is then the sample mean.
        count = min(len(dataset), self.config.val_samples) // world * world
        if count == 0:
            return []
        indices = list(range(rank, count, world))
        return self._loader(torch.utils.data.Subset(dataset, indices), None)

    def _loader(self, dataset: Dataset, sampler: Sampler | None) -> DataLoader:
        return DataLoader(
            dataset, batch_size=self.micro_batch, sampler=sampler, shuffle=False, drop_last=False,
            num_workers=self.config.num_workers, persistent_workers=False, pin_memory=torch.cuda.is_available(),
        )


def open_sources(config: DataConfig, meta: dict) -> dict[str, TokenSplit]:
    """Every source's train split, verified, each written with the tokenizer of ``data.shards``."""
    splits = {}
    for name, folder in config.sources.items():
        if not (Path(folder) / "meta.json").is_file():
            raise ConfigError(f"data.sources.{name}", f"no token shards at {folder} (meta.json missing)")
        if load_meta(folder)["tokenizer_sha256"] != meta["tokenizer_sha256"]:
            raise ConfigError(f"data.sources.{name}", f"{folder} was tokenized with another tokenizer than "
                                                      f"data.shards ({config.shards}): every source needs the same one")
        splits[name] = open_split(folder, "train")
        verify_split(splits[name])
    return splits


def require_shards(config: DataConfig) -> Path:
    """The shards folder; training never builds data (see slmtrain.orchestrate for the demo build)."""
    shards = Path(config.shards)
    if not (shards / "meta.json").is_file():
        raise UserError(f"no token shards at {shards} (meta.json missing): run launch/curate.py and "
                        "launch/tokenize_data.py, or set data.shards=PATH")
    return shards
