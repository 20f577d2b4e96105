"""One table per weight format, read in both directions (torchtitan's state-dict adapter keeps one mapping too).

A :class:`Row` pairs an slmtrain tensor name with the format's names for it and a :class:`Transform` that cuts the
one into the others, together with its exact inverse. Export walks the table over a state dict, import walks the
same table back, so a name or a split can never be right in one direction and wrong in the other. Patterns hold
``{i}`` for the layer and ``{e}`` for an expert: a row whose format names hold ``{e}`` stores each expert of
slmtrain's stacked (experts, rows, columns) tensor on its own, a row without stores the stack whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch

from slmtrain.model.config import ModelConfig

Layers = Literal["every", "dense", "moe"]  # which layers a per-layer row applies to


class Transform(NamedTuple):
    """``to`` turns one slmtrain tensor into the format's tensors (in the row's name order); ``back`` undoes it."""

    to: Callable[[torch.Tensor], list[torch.Tensor]]
    back: Callable[[list[torch.Tensor]], torch.Tensor]


SAME = Transform(lambda t: [t], lambda parts: parts[0])


def split(*sizes: int) -> Transform:
    """A fused projection (q/k/v) cut into its parts along the rows; the parts concatenated back."""
    return Transform(lambda t: list(t.split(list(sizes))), lambda parts: torch.cat(parts))


# The fused gate-then-up matrix of a SwiGLU FFN cut in two along its rows (dim -2: a stack of experts too).
HALVES = Transform(lambda t: list(t.chunk(2, dim=-2)), lambda parts: torch.cat(parts, dim=-2))

# slmtrain's shared-expert gate is a (1, d_model) Linear, llama.cpp reads a (d_model,) vector.
VECTOR = Transform(lambda t: [t.flatten()], lambda parts: parts[0][None])


def first_rows(n: int) -> Transform:
    """An embedding or output head without its padding rows (never trained): an imported model has none."""
    return Transform(lambda t: [t[:n]], lambda parts: parts[0])


def then(first: Transform, each: tuple[Transform, ...]) -> Transform:
    """``first``, then the k-th of ``each`` (one tensor to one) on the k-th part it made: llama.cpp's q/k order."""
    return Transform(
        lambda t: [part for f, piece in zip(each, first.to(t)) for part in f.to(piece)],
        lambda parts: first.back([f.back([piece]) for f, piece in zip(each, parts)]),
    )


@dataclass(frozen=True)
class Row:
    ours: str  # slmtrain's name; ``{i}`` the layer
    theirs: tuple[str, ...]  # the format's names, one per part the transform makes; ``{i}`` layer, ``{e}`` expert
    transform: Transform = SAME
    layers: Layers = "every"  # for a per-layer row: every layer, or only the dense or the MoE ones

    @property
    def per_expert(self) -> bool:
        return any("{e}" in name for name in self.theirs)

    def names(self, layer: int | None, expert: int | None = None) -> list[str]:
        return [name.format(i=layer, e=expert) for name in self.theirs]


def row(ours: str, *theirs: str, transform: Transform = SAME, layers: Layers = "every") -> Row:
    """A Row written as a table line: the slmtrain name, then the format's names."""
    return Row(ours, theirs, transform, layers)


def placed(table: list[Row], config: ModelConfig) -> Iterator[tuple[Row, int | None]]:
    """Each row with the layer it applies to (None for the model-wide ones): model-wide rows first, then layer by
    layer, the order the formats' own converters write tensors in."""
    for r in table:
        if "{i}" not in r.ours:
            yield r, None
    for i in range(config.n_layer):
        kind = "moe" if config.is_moe_layer(i) else "dense"
        for r in table:
            if "{i}" in r.ours and r.layers in ("every", kind):
                yield r, i


def export_tensors(table: list[Row], config: ModelConfig, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """slmtrain's state dict -> the format's tensors, by name."""
    out: dict[str, torch.Tensor] = {}
    for r, i in placed(table, config):
        tensor = state[r.ours.format(i=i)]
        if r.per_expert:
            for e, expert in enumerate(tensor.unbind(0)):
                out.update(zip(r.names(i, e), r.transform.to(expert)))
        else:
            out.update(zip(r.names(i), r.transform.to(tensor)))
    return out


def import_tensors(table: list[Row], config: ModelConfig, get: Callable[[str], torch.Tensor],
                   experts: bool = True) -> dict[str, torch.Tensor]:
    """The format's tensors (``get`` reads one by name; KeyError if absent) -> slmtrain's state dict. With
    ``experts=False`` the per-expert rows are not read (see :func:`import_expert`). A tied model's head is its
    embedding, held under both names as the Transformer holds it."""
    state: dict[str, torch.Tensor] = {}
    for r, i in placed(table, config):
        if not r.per_expert:
            state[r.ours.format(i=i)] = r.transform.back([get(name) for name in r.names(i)])
        elif experts:
            assert config.moe is not None and i is not None  # experts live in layers
            state[r.ours.format(i=i)] = torch.stack([import_expert(r, get, i, e) for e in range(config.moe.experts)])
    if config.tie_embeddings:
        state.setdefault("lm_head.weight", state["embed.weight"])
    return state


def import_expert(r: Row, get: Callable[[str], torch.Tensor], layer: int, expert: int) -> torch.Tensor:
    """One expert's slice of a per-expert row's slmtrain tensor: what expert offloading reads on demand."""
    return r.transform.back([get(name) for name in r.names(layer, expert)])
