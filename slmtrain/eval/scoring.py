"""Scoring: log-likelihoods of continuations with shared contexts, greedy generation, and a task's metrics.

Log-likelihoods are lm-evaluation-harness's: the context is conditioned on the tokenizer's BOS (else EOS; lm-eval's
``add_bos_token=True``), the continuation's tokens are what encoding context + continuation adds to the context's
(tokens may merge across the seam), trailing context spaces move to the continuation, and a request longer than the
model's context is cut from the left, keeping ``max_seq_len`` inputs.

Work is shared the way fast runtimes share it: the choices of one item have one context, so the context runs once
(batched over items, right-padded) into a KV cache, the cache's rows are copied once per choice
(:meth:`KVCache.select_rows`), and all choices run together from there; the head is applied only where a
continuation token is predicted. Requests are sorted by length so that padding stays small.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from slmtrain.config import ConfigError, UserError
from slmtrain.eval import TextTokenizer, document_prefix_id
from slmtrain.eval.tasks import Generation, MultipleChoice, Task, TaskResult, fewshot_prefix
from slmtrain.model.transformer import KVCache, Transformer

ROWS_PER_BATCH = 32  # continuations scored together; bounds the copied KV cache (rows x layers x positions)


def encode_pair(tokenizer: TextTokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of the prefix + context, and of the continuation, split where lm-evaluation-harness splits them."""
    spaces = len(context) - len(context.rstrip(" "))
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    context_ids = tokenizer.encode(context) if context else []
    continuation_ids = tokenizer.encode(context + continuation)[len(context_ids):]
    if not continuation_ids:  # the whole text merged into the context's last token: score the continuation alone
        continuation_ids = tokenizer.encode(continuation)
    return [document_prefix_id(tokenizer), *context_ids], continuation_ids


@dataclass(frozen=True)
class Scored:
    loglikelihood: float  # nats
    is_greedy: bool  # greedy decoding would produce exactly the continuation
    truncated: bool  # the context was cut from the left to fit the model


@torch.no_grad()
def loglikelihoods(model: Transformer, pairs: Sequence[tuple[list[int], list[int]]],
                   rows_per_batch: int = ROWS_PER_BATCH) -> list[Scored]:
    """log p(continuation | context) for each (context ids, continuation ids), in the order given. Pairs with the
    same context ids share its computation."""
    max_len = model.config.max_seq_len
    for _, continuation in pairs:
        if not continuation or len(continuation) > max_len:
            raise UserError(f"a continuation of {len(continuation)} tokens cannot be scored with max_seq_len={max_len}")
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, (context, continuation) in enumerate(pairs):
        if len(context) + len(continuation) - 1 > max_len:  # cut alone, as the harness cuts each request
            groups[(-index - 1, *context)] = [index]  # a key no other pair has
        else:
            groups.setdefault(tuple(context), []).append(index)
    def extent(members: list[int]) -> tuple[int, int]:  # (shared prefix, longest continuation) in positions
        context, tail = len(pairs[members[0]][0]), max(len(pairs[m][1]) for m in members)
        return min(context, max_len + 1 - tail) - 1, tail

    order = sorted(groups.values(), key=lambda members: -sum(extent(members)))
    results: list[Scored | None] = [None] * len(pairs)
    batch: list[list[int]] = []
    prefix = tail = 0
    for members in order:
        p, t = extent(members)
        # padded rows all run to the batch's longest prefix + longest continuation: keep that within the model
        if batch and (sum(map(len, batch)) + len(members) > rows_per_batch or max(prefix, p) + max(tail, t) > max_len):
            _score_batch(model, pairs, batch, results)
            batch, prefix, tail = [], 0, 0
        batch.append(members)
        prefix, tail = max(prefix, p), max(tail, t)
    if batch:
        _score_batch(model, pairs, batch, results)
    return results  # type: ignore[return-value]


def _score_batch(model: Transformer, pairs: Sequence[tuple[list[int], list[int]]], groups: list[list[int]],
                 results: list[Scored | None]) -> None:
    """One forward over the groups' shared prefixes, one over every continuation."""
    max_len = model.config.max_seq_len
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    prefixes, truncated = [], []
    for members in groups:
        context, continuation = pairs[members[0]]
        whole = (context + continuation)[-(max_len + 1):]
        truncated.append(len(whole) < len(context) + len(continuation))
        kept = whole[: len(whole) - len(continuation)]
        prefixes.append(kept[:-1])  # the context's last token starts each continuation's row
    width = max(map(len, prefixes))
    rows, row_group, row_pairs = [], [], []
    for g, members in enumerate(groups):
        for m in members:
            context, continuation = pairs[m]
            rows.append([context[-1], *continuation[:-1]])
            row_group.append(g)
            row_pairs.append(m)
    tail_width = max(map(len, rows))
    source = KVCache(model.config, len(groups), max(width, 1), device, dtype, ragged=True)
    if width:
        ids = torch.zeros(len(groups), width, dtype=torch.long, device=device)
        for g, prefix in enumerate(prefixes):
            ids[g, : len(prefix)] = torch.as_tensor(prefix)
        model.check_token_ids(ids)
        model.hidden_states(ids, cache=source)
    source.row_lengths = torch.as_tensor([len(p) for p in prefixes], device=device)
    cache = source.select_rows(torch.as_tensor(row_group, device=device), width + tail_width)
    ids = torch.zeros(len(rows), tail_width, dtype=torch.long, device=device)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = torch.as_tensor(row)
    model.check_token_ids(ids)
    hidden = model.hidden_states(ids, cache=cache)
    spans = [len(pairs[m][1]) for m in row_pairs]
    picked = torch.cat([hidden[r, :span] for r, span in enumerate(spans)])
    logprobs = F.log_softmax(model.logits(picked).float(), dim=-1)
    targets = torch.as_tensor([t for m in row_pairs for t in pairs[m][1]], device=device)
    token_ll = logprobs.gather(-1, targets[:, None]).squeeze(-1)
    greedy = logprobs.argmax(-1) == targets
    start = 0
    for r, m in enumerate(row_pairs):
        end = start + spans[r]
        total = float(token_ll[start:end].sum())
        if not math.isfinite(total):
            raise UserError(f"non-finite log-likelihood ({total}): the model produces NaN/inf logits")
        results[m] = Scored(total, bool(greedy[start:end].all()), truncated[row_group[r]])
        start = end


# ---------------------------------------------------------------------------------------------------- generation
@torch.no_grad()
def greedy_until(model: Transformer, tokenizer: TextTokenizer, prompt: str, stop: Sequence[str] = (),
                 max_new_tokens: int = 256) -> tuple[str, bool]:
    """Greedy continuation of ``prompt`` cut before the first stop string, and whether the prompt was cut from the
    left to leave room for ``max_new_tokens`` (at least one). Stops at EOS and at the context limit."""
    max_len = model.config.max_seq_len
    room = max(1, min(max_new_tokens, max_len - 1))
    ids = [document_prefix_id(tokenizer), *tokenizer.encode(prompt)]
    truncated = len(ids) > max_len - room
    ids = ids[-(max_len - room):]
    device = next(model.parameters()).device
    cache = KVCache(model.config, 1, max_len, device, next(model.parameters()).dtype)
    logits = model(torch.as_tensor([ids], device=device), cache=cache)[0, -1]
    generated: list[int] = []
    text = ""
    for _ in range(min(max_new_tokens, max_len - len(ids))):
        token = int(logits.argmax())
        if token == tokenizer.eos_id:
            break
        generated.append(token)
        text = tokenizer.decode(generated)
        if any(s in text for s in stop):
            break
        if cache.length < max_len:
            logits = model(torch.as_tensor([[token]], device=device), cache=cache)[0, -1]
    cut = min((text.index(s) for s in stop if s in text), default=len(text))
    return text[:cut], truncated


# ---------------------------------------------------------------------------------------------------- evaluation
def evaluate_task(model: Transformer, tokenizer: TextTokenizer, task: Task, shots: int = 0, limit: int | None = None,
                  seed: int = 1234, max_new_tokens: int | None = None) -> TaskResult:
    """Score the first ``limit`` items (file order, as lm-eval's ``--limit``) with ``shots`` examples each."""
    if limit is not None and limit < 1:
        raise ConfigError("limit", f"must be >= 1, got {limit}")
    if shots < 0:
        raise ConfigError("shots", f"must be >= 0, got {shots}")
    if task.build_for is not None:
        task = task.build_for(tokenizer, model.config.max_seq_len)
    indices = range(len(task.items) if limit is None else min(limit, len(task.items)))
    items = [task.items[i].prefixed(fewshot_prefix(task, i, shots, seed)) for i in indices]
    if task.is_generation:
        records = _generate_all(model, tokenizer, task, items, max_new_tokens or task.max_new_tokens)
    else:
        records = _choose_all(model, tokenizer, items)
    for index, record in zip(indices, records):
        record["index"] = index
    names = [m for m in task.metrics if m in records[0]] if not task.is_generation else list(records[0]["scores"])
    scores = {m: [float(r["scores"][m] if task.is_generation else r[m]) for r in records] for m in names}
    metrics, stderr = {}, {}
    for name, values in scores.items():
        metrics[name], stderr[name] = mean_and_stderr(values)
    by_group: dict[str, dict[str, float]] = {}
    if task.groups is not None:  # macro over groups (MMLU's subjects); the plain mean beside it, as _micro
        groups = [task.groups[i] for i in indices]
        for index, record in zip(indices, records):
            record["group"] = task.groups[index]
        for name in names:
            values: dict[str, list[float]] = {}
            for group, value in zip(groups, scores[name]):
                values.setdefault(group, []).append(value)
            means = {group: mean_and_stderr(v) for group, v in values.items()}
            for group, (mean, _) in means.items():
                by_group.setdefault(group, {})[name] = mean
            metrics[f"{name}_micro"], stderr[f"{name}_micro"] = metrics[name], stderr[name]
            metrics[name] = sum(m for m, _ in means.values()) / len(means)
            stderr[name] = math.sqrt(sum(s * s for _, s in means.values())) / len(means)
    return TaskResult(task.name, task.family, shots, len(records), metrics, stderr, scores,
                      sum(bool(r["truncated"]) for r in records), task.notes, records, by_group)


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float]:
    """The mean and its standard error: sample standard deviation / sqrt(n), as lm-eval's ``mean_stderr``."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)


def _choose_all(model: Transformer, tokenizer: TextTokenizer, items: list[MultipleChoice]) -> list[dict]:
    pairs = [encode_pair(tokenizer, context, continuation)
             for item in items for context, continuation in zip(item.contexts, item.continuations)]
    scored = loglikelihoods(model, pairs)
    records, start = [], 0
    for item in items:
        mine = scored[start: start + len(item.contexts)]
        start += len(item.contexts)
        loglik = [s.loglikelihood for s in mine]
        normalised = [ll / max(length, 1) for ll, length in zip(loglik, item.lengths)]
        gold_bytes = len(item.continuations[item.label].encode("utf-8"))
        records.append({
            "label": item.label, "loglikelihoods": loglik,
            "acc": float(max(range(len(loglik)), key=loglik.__getitem__) == item.label),
            "acc_norm": float(max(range(len(loglik)), key=normalised.__getitem__) == item.label),
            "bpb": -loglik[item.label] / math.log(2) / max(gold_bytes, 1),
            "truncated": any(s.truncated for s in mine)})
    return records


def _generate_all(model: Transformer, tokenizer: TextTokenizer, task: Task, items: list[Generation],
                  max_new_tokens: int) -> list[dict]:
    assert task.scorer is not None
    records = []
    for item in items:
        output, truncated = greedy_until(model, tokenizer, item.prompt, task.until, max_new_tokens)
        records.append({"output": output, "scores": task.scorer(output, item.reference), "truncated": truncated})
    return records
