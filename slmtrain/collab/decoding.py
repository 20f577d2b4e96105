"""Decoding one token at a time, keeping what each step knows: the chosen token, its log-probability, the entropy of
the model's distribution and the likeliest alternatives. The server's logprobs, the router's confidence signals and
speculative decoding read these; ``Transformer.generate`` returns ids only, so this loop runs over the model's public
forward pass and KV cache instead."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from slmtrain.artifacts import TextTokenizer
from slmtrain.model.transformer import KVCache, Transformer


def sampling_probs(logits: torch.Tensor, temperature: float, top_p: float | None = None) -> torch.Tensor:
    """The distribution a sampler draws from: softmax(logits / temperature), restricted to the smallest set of
    likeliest tokens whose mass reaches ``top_p`` and renormalised. ``transformer.sample_next`` draws from the same
    rule but only returns the draw; speculative decoding needs the probabilities themselves."""
    probs = (logits.float() / temperature).softmax(dim=-1)
    if top_p is None or top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    drop = sorted_probs.cumsum(dim=-1) - sorted_probs > top_p
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_probs.masked_fill(drop, 0.0))
    return kept / kept.sum(dim=-1, keepdim=True)


def pick_token(logits: torch.Tensor, temperature: float, top_p: float | None,
               generator: torch.Generator | None) -> int:
    """Greedy at temperature 0, else one draw from ``sampling_probs``; ``logits`` is one position's (V,)."""
    if temperature <= 0:
        return int(logits.argmax())
    return int(torch.multinomial(sampling_probs(logits, temperature, top_p), 1, generator=generator))


@dataclass
class Step:
    token: int
    logprob: float  # log p(token) under the model's own distribution (temperature 1), as OpenAI reports it
    entropy: float  # of that distribution, in nats
    top: list[tuple[int, float]]  # the likeliest tokens and their log-probabilities, best first


def next_step(logits: torch.Tensor, temperature: float, top_p: float | None, top_n: int,
              generator: torch.Generator | None) -> Step:
    """The token chosen from one position's (V,) logits, with what the model knew about it."""
    logprobs = F.log_softmax(logits.float(), dim=-1)
    token = pick_token(logits, temperature, top_p, generator)
    best = logprobs.topk(min(top_n, logprobs.numel())) if top_n else None
    return Step(token=token, logprob=float(logprobs[token]), entropy=float(-(logprobs.exp() * logprobs).sum()),
                top=[] if best is None else list(zip(best.indices.tolist(), best.values.tolist())))


@torch.no_grad()
def decode_steps(model: Transformer, prompt_ids: Sequence[int], max_new_tokens: int, *, temperature: float = 0.0,
                 top_p: float | None = None, top_n: int = 0,
                 generator: torch.Generator | None = None) -> Iterator[Step]:
    """Continue ``prompt_ids`` one token at a time (up to ``max_new_tokens`` or the context's end); the consumer
    stops early by leaving the loop."""
    device = next(model.parameters()).device
    prompt = torch.as_tensor([list(prompt_ids)], device=device)
    model.check_token_ids(prompt)
    total = min(prompt.shape[1] + max_new_tokens, model.config.max_seq_len)
    cache = KVCache(model.config, 1, total, device, next(model.parameters()).dtype)
    logits = model(prompt, cache=cache)[0, -1]
    for _ in range(total - prompt.shape[1]):
        step = next_step(logits, temperature, top_p, top_n, generator)
        yield step
        if cache.length < total:
            logits = model(torch.as_tensor([[step.token]], device=device), cache=cache)[0, -1]


@dataclass
class Piece:
    """Text released to the caller and the steps that produced it (a stop string may cut the last one's text)."""

    text: str
    steps: list[Step]


@dataclass
class Finish:
    reason: str  # "stop" (stop string or EOS), "length" (max_tokens or the context's end), "timeout" (deadline)
    steps: list[Step] = field(default_factory=list)  # every generated step, the stopping token's included


class TextRelease:
    """Turns generated steps into text as it becomes final. Text that could be the start of a stop string (or half
    of a multi-byte character) is held back until the next tokens settle it; a stop string and what follows it are
    never released, and neither is EOS. ``push`` each step, then ``end`` unless a push already finished."""

    def __init__(self, tokenizer: TextTokenizer, stop: Sequence[str] = ()):
        self.tokenizer, self.stop = tokenizer, list(stop)
        self.steps: list[Step] = []
        self.released_tokens, self.released_chars = 0, 0
        self.finished = False

    def push(self, step: Step) -> list[Piece | Finish]:
        steps, decode = self.steps, self.tokenizer.decode
        steps.append(step)
        if step.token == self.tokenizer.eos_id:
            self.finished = True
            events: list[Piece | Finish] = []
            if self.released_tokens < len(steps) - 1:
                text = decode([s.token for s in steps[:-1]])
                events.append(Piece(text[self.released_chars:], steps[self.released_tokens:-1]))
            return [*events, Finish("stop", steps)]
        text = decode([s.token for s in steps])
        hits = [text.find(s, self.released_chars) for s in self.stop]  # released text holds no stop's start
        cut = min((h for h in hits if h >= 0), default=-1)
        if cut >= 0:
            self.finished = True
            ends = [len(decode([s.token for s in steps[: i + 1]])) for i in range(self.released_tokens, len(steps))]
            starts = [self.released_chars, *ends[:-1]]
            kept = [s for s, start in zip(steps[self.released_tokens:], starts) if start < cut]
            piece = [Piece(text[self.released_chars:cut], kept)] if cut > self.released_chars else []
            return [*piece, Finish("stop", steps)]
        if _unsettled(text, self.stop):
            return []
        piece = Piece(text[self.released_chars:], steps[self.released_tokens:])
        self.released_tokens, self.released_chars = len(steps), len(text)
        return [piece]

    def end(self, reason: str = "length") -> list[Piece | Finish]:
        """The held-back text and the Finish, once generation ended for ``reason`` ("length", or "timeout": then
        nothing more is released)."""
        self.finished = True
        if reason != "length" or self.released_tokens == len(self.steps):
            return [Finish(reason, self.steps)]
        text = self.tokenizer.decode([s.token for s in self.steps])
        return [Piece(text[self.released_chars:], self.steps[self.released_tokens:]), Finish(reason, self.steps)]


def complete_text(model: Transformer, tokenizer: TextTokenizer, prompt_ids: Sequence[int], max_tokens: int, *,
                  temperature: float = 0.0, top_p: float | None = None, stop: Sequence[str] = (), top_n: int = 0,
                  generator: torch.Generator | None = None,
                  keep_going: Callable[[], bool] = lambda: True) -> Iterator[Piece | Finish]:
    """Generated text as it becomes final (see :class:`TextRelease`), ending with one ``Finish``."""
    release = TextRelease(tokenizer, stop)
    for step in decode_steps(model, prompt_ids, max_tokens, temperature=temperature, top_p=top_p, top_n=top_n,
                             generator=generator):
        if not keep_going():
            yield from release.end("timeout")
            return
        yield from release.push(step)
        if release.finished:
            return
    yield from release.end()


def _unsettled(text: str, stop: Sequence[str]) -> bool:
    """Whether the end of ``text`` may still change meaning: a partial character, or a proper prefix of a stop."""
    return text.endswith("\ufffd") or any(text.endswith(s[:n]) for s in stop for n in range(1, len(s)))
