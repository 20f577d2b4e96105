"""A training stream mixed from several token-shard sources in fixed shares, deterministic from (seed, position).

Which source position ``g`` of the stream draws from is an apportionment, not a coin flip: with weights ``w_s``
(normalised), the stream is the sorted union of the values ``(k + 1/2) / w_s`` for k = 0, 1, ... of every source
(ties to the lower source index), Sainte-Laguë's divisor method. It is house-monotone (each position adds exactly
one draw to one source), so over any window of the stream every source's share is its weight up to rounding, and the
draws of each source up to any position are computed directly (:func:`draws_before`, exact rational arithmetic, O(S^2)
for S sources, independent of the position: no permutation of the stream is materialised, so a 1T-token run holds
only the S counters and one epoch permutation per source, as a single-source run does).

The k-th draw of source s is sample ``permutation_{s, epoch}[k mod n_s]`` of that source, ``epoch = k // n_s``, the
permutation drawn from (seed, s, epoch): each source is read in epochs, like a single-source stream.
"""

from __future__ import annotations

import heapq
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

WEIGHT_DENOMINATOR = 10**9  # weights are read as exact fractions at this resolution


def exact_weights(weights: Sequence[float]) -> list[Fraction]:
    """Weights as exact fractions summing to 1 (zero weights stay zero: their source is never drawn)."""
    fractions = [Fraction(w).limit_denominator(WEIGHT_DENOMINATOR) for w in weights]
    total = sum(fractions)
    return [f / total for f in fractions]


def _value(weight: Fraction, k: int) -> Fraction:
    """The position of source's k-th draw on Sainte-Laguë's scale."""
    return Fraction(2 * k + 1, 2) / weight


def draws_before(weights: Sequence[Fraction], position: int) -> list[int]:
    """How many of the first ``position`` positions of the stream each source supplies."""
    sources = len(weights)
    # a lower bound for each count (the threshold is within `sources` of the position), then the smallest values
    counts = [max(0, math.floor((position - sources) * w) - 1) if w else 0 for w in weights]
    heap = [(_value(w, counts[s]), s) for s, w in enumerate(weights) if w]
    heapq.heapify(heap)
    for _ in range(position - sum(counts)):
        _, s = heapq.heappop(heap)
        counts[s] += 1
        heapq.heappush(heap, (_value(weights[s], counts[s]), s))
    return counts


def source_order(weights: Sequence[Fraction], start: int) -> Iterator[tuple[int, int]]:
    """(source, its draw number) for the stream positions ``start``, ``start + 1``, ..."""
    counts = draws_before(weights, start)
    heap = [(_value(w, counts[s]), s) for s, w in enumerate(weights) if w]
    heapq.heapify(heap)
    while True:
        _, s = heapq.heappop(heap)
        yield s, counts[s]
        counts[s] += 1
        heapq.heappush(heap, (_value(weights[s], counts[s]), s))


def source_epoch_order(num_samples: int, seed: int, source: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, source, epoch]).permutation(num_samples)


class MixedSamples(Dataset):
    """The sources' packed samples end to end: index ``offsets[s] + i`` is sample i of source s."""

    def __init__(self, sources: Sequence[Dataset]):
        self.sources = list(sources)
        self.offsets = np.cumsum([0, *(len(s) for s in self.sources)])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> torch.Tensor:
        source = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.sources[source][index - int(self.offsets[source])]


class MixtureSampler(Sampler[int]):
    """Indices into :class:`MixedSamples` of the global stream from ``start`` on, for one rank (position g goes to
    rank g % world, as the single-source stream). Endless: the trainer's max_steps ends the run."""

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], seed: int, start: int, rank: int = 0,
                 world: int = 1):
        self.sizes, self.weights = list(sizes), exact_weights(weights)
        self.offsets = np.cumsum([0, *self.sizes])
        self.seed, self.start, self.rank, self.world = seed, start, rank, world

    def __iter__(self) -> Iterator[int]:
        orders: dict[tuple[int, int], np.ndarray] = {}  # (source, epoch) -> permutation; one kept per source
        for step, (source, draw) in enumerate(source_order(self.weights, self.start)):
            if step % self.world != self.rank:
                continue
            epoch = draw // self.sizes[source]
            if (source, epoch) not in orders:
                orders = {key: order for key, order in orders.items() if key[0] != source}
                orders[(source, epoch)] = source_epoch_order(self.sizes[source], self.seed, source, epoch)
            yield int(self.offsets[source]) + int(orders[(source, epoch)][draw % self.sizes[source]])


@dataclass(frozen=True)
class SourceUse:
    """What one source supplies to the first ``positions`` samples of the stream."""

    name: str
    weight: float  # normalised
    samples: int  # packed samples the source holds
    draws: int  # samples drawn from it
    tokens: int  # draws x seq_len
    epochs: float  # draws / samples


def source_use(names: Sequence[str], sizes: Sequence[int], weights: Sequence[float], positions: int,
               seq_len: int) -> list[SourceUse]:
    exact = exact_weights(weights)
    return [SourceUse(name, float(w), size, draws, draws * seq_len, draws / size)
            for name, size, w, draws in zip(names, sizes, exact, draws_before(exact, positions))]


class MixtureLogger(pl.Callback):
    """Tokens and epochs of each source so far: logged with the training metrics every ``every`` steps
    (``tokens/NAME``, ``epochs/NAME``) and written to ``RUN_DIR/mixture.json`` (what the planned run will use beside
    what it has used), computed from the step alone, so a resumed run reports what an uninterrupted one does."""

    def __init__(self, run_dir: Path, names: Sequence[str], sizes: Sequence[int], weights: Sequence[float],
                 samples_per_step: int, seq_len: int, planned_steps: int, every: int):
        self.path = run_dir / "mixture.json"
        self.names, self.sizes, self.weights = list(names), list(sizes), list(weights)
        self.samples_per_step, self.seq_len, self.every = samples_per_step, seq_len, every
        self.planned = source_use(self.names, self.sizes, self.weights, planned_steps * samples_per_step, seq_len)

    def used(self, step: int) -> list[SourceUse]:
        return source_use(self.names, self.sizes, self.weights, step * self.samples_per_step, self.seq_len)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if (batch_idx + 1) % trainer.accumulate_grad_batches or step % self.every or not trainer.is_global_zero:
            return
        use = self.used(step)
        for logger in trainer.loggers:
            logger.log_metrics({**{f"tokens/{u.name}": u.tokens for u in use},
                                **{f"epochs/{u.name}": u.epochs for u in use}}, step=step)
        self.write(step, use)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self.write(trainer.global_step, self.used(trainer.global_step))

    def write(self, step: int, use: list[SourceUse]) -> None:
        partial = self.path.with_suffix(".json.partial")
        partial.write_text(json.dumps({"step": step, "used": [asdict(u) for u in use],
                                       "planned": [asdict(u) for u in self.planned]}, indent=2) + "\n")
        partial.replace(self.path)
