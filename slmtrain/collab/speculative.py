"""Speculative decoding (Leviathan et al., 2023; Chen et al., 2023): a small draft model proposes ``k`` tokens, the
target scores all of them in one forward pass, and the longest prefix the target agrees with is kept, plus one token
from the target itself. Greedy output is the target's greedy output; sampled output follows the target's distribution
exactly, by the rejection rule: keep a drafted token x with probability min(1, p(x) / q(x)), else draw from
normalise(max(0, p - q)).

Both models keep a KV cache; a rejection rolls a cache back by shortening its ``length`` (positions past it are
overwritten by the next forward pass)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slmtrain.collab.decoding import sampling_probs
from slmtrain.model.transformer import KVCache, Transformer


@dataclass
class SpeculativeResult:
    tokens: torch.Tensor  # (1, T + new) ids: the prompt and its continuation, as Transformer.generate returns them
    drafted: int  # tokens the draft proposed
    accepted: int  # of those, kept
    target_calls: int  # forward passes of the target (one per round, the prompt's included)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


class _Cached:
    """A model with its cache, fed whatever part of the committed sequence it has not seen yet."""

    def __init__(self, model: Transformer, max_len: int, device: torch.device):
        self.model = model
        self.cache = KVCache(model.config, 1, max_len, device, next(model.parameters()).dtype)

    def feed(self, ids: list[int]) -> torch.Tensor:
        """Logits (len(ids), V) after each of ``ids``."""
        device = self.cache.keys.device
        return self.model(torch.as_tensor([ids], device=device), cache=self.cache)[0].float()


@torch.no_grad()
def speculative_generate(draft: Transformer, target: Transformer, input_ids: torch.Tensor, max_new_tokens: int,
                         k: int = 4, *, temperature: float = 0.0, top_p: float | None = None,
                         eos_id: int | None = None, generator: torch.Generator | None = None) -> SpeculativeResult:
    """Continue one row (1, T) with ``target``'s distribution, drafting ``k`` tokens a round with ``draft``. Stops
    like ``target.generate``: after ``max_new_tokens``, at the target's context end, or after emitting ``eos_id``."""
    if input_ids.ndim != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"speculative decoding continues one row: input_ids of shape (1, T), got {tuple(input_ids.shape)}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if draft.config.vocab_size != target.config.vocab_size:
        raise ValueError(f"draft and target vocabularies differ ({draft.config.vocab_size} vs {target.config.vocab_size})")
    target.check_token_ids(input_ids)
    sequence = input_ids[0].tolist()
    total = min(len(sequence) + max_new_tokens, target.config.max_seq_len)
    if total > draft.config.max_seq_len:
        raise ValueError(f"{total} positions needed but the draft's max_seq_len is {draft.config.max_seq_len}")
    drafter, verifier = _Cached(draft, total, input_ids.device), _Cached(target, total, input_ids.device)
    drafted = accepted = rounds = 0
    while len(sequence) < total and not (eos_id is not None and eos_id in sequence[input_ids.shape[1]:]):
        n_draft = min(k, total - len(sequence) - 1)  # the round adds up to n_draft + 1 tokens
        draft_tokens: list[int] = []
        draft_probs: list[torch.Tensor] = []
        for i in range(n_draft):
            logits = drafter.feed(sequence[drafter.cache.length:] if i == 0 else draft_tokens[-1:])[-1]
            draft_probs.append(_distribution(logits, temperature, top_p))
            draft_tokens.append(_draw(draft_probs[-1], temperature, generator))
        target_probs = [_distribution(row, temperature, top_p)
                        for row in verifier.feed(sequence[verifier.cache.length:] + draft_tokens)[-(n_draft + 1):]]
        rounds += 1
        kept = 0
        for token, p, q in zip(draft_tokens, target_probs, draft_probs):
            if not _accept(token, p, q, temperature, generator):
                break
            kept += 1
        if kept < n_draft:
            residual = target_probs[kept] if temperature <= 0 else (target_probs[kept] - draft_probs[kept]).clamp_min(0)
            next_token = _draw(residual / residual.sum(), temperature, generator)
        else:
            next_token = _draw(target_probs[n_draft], temperature, generator)
        drafted += n_draft
        accepted += kept
        sequence += draft_tokens[:kept] + [next_token]
        # Both caches must end up holding sequence[:-1]; the draft's may hold less, fed on the next round.
        verifier.cache.length = len(sequence) - 1
        drafter.cache.length = min(drafter.cache.length, len(sequence) - 1)
    new = sequence[input_ids.shape[1]:]
    if eos_id is not None and eos_id in new:
        new = new[: new.index(eos_id) + 1]
    tokens = torch.as_tensor([sequence[: input_ids.shape[1]] + new], device=input_ids.device)
    return SpeculativeResult(tokens, drafted, accepted, rounds)


def _distribution(logits: torch.Tensor, temperature: float, top_p: float | None) -> torch.Tensor:
    """Greedy decoding as a distribution: all mass on the argmax (so the rejection rule keeps exact agreement)."""
    if temperature <= 0:
        return torch.nn.functional.one_hot(logits.argmax(), logits.shape[-1]).float()
    return sampling_probs(logits, temperature, top_p)


def _draw(probs: torch.Tensor, temperature: float, generator: torch.Generator | None) -> int:
    if temperature <= 0:
        return int(probs.argmax())
    return int(torch.multinomial(probs, 1, generator=generator))


def _accept(token: int, p: torch.Tensor, q: torch.Tensor, temperature: float,
            generator: torch.Generator | None) -> bool:
    if temperature <= 0:
        return bool(p[token] == 1.0)
    ratio = float(p[token] / q[token])
    return ratio >= 1.0 or float(torch.rand((), generator=generator)) < ratio
