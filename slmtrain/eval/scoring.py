"""Scoring: log-likelihoods of continuations with shared contexts, greedy generation, and a task's metrics.

Log-likelihoods are lm-evaluation-harness's: the context is conditioned on the tokenizer's BOS (else EOS, else nothing;
lm-eval's ``add_bos_token=True``), the continuation's tokens are what encoding context + continuation adds to the context's
(tokens may merge across the seam), trailing context spaces move to the continuation, and a request longer than the
model's context is cut from the left, keeping ``max_seq_len`` inputs.

Work is shared the way fast runtimes share it: the choices of one item have one context, so an item is packed as one
tree (the context once, then each choice as a branch that sees the context and itself, its positions restarting where
the context ends: :class:`slmtrain.model.transformer.Packing`), items are packed into rows of about ``ROW_TOKENS``
tokens without padding between them, and the head is applied only where a continuation token is predicted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from slmtrain.config import ConfigError, UserError
from slmtrain.eval import TextTokenizer, document_prefix
from slmtrain.eval.tasks import Generation, MultipleChoice, Task, TaskResult, fewshot_prefix
from slmtrain.model.transformer import KVCache, Packing, Transformer

ROW_TOKENS = 192  # packed row length: attention over a row costs O(row^2), the matmuls O(row)
BATCH_TOKENS = 4096  # tokens per forward pass


def encode_pair(tokenizer: TextTokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of the prefix + context, and of the continuation, split where lm-evaluation-harness splits them."""
    spaces = len(context) - len(context.rstrip(" "))
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    context_ids = tokenizer.encode(context) if context else []
    continuation_ids = tokenizer.encode(context + continuation)[len(context_ids):]
    if not continuation_ids:  # the whole text merged into the context's last token: score the continuation alone
        continuation_ids = tokenizer.encode(continuation)
    context_ids = [*document_prefix(tokenizer), *context_ids]
    if not context_ids:
        raise UserError("an empty context can only be scored after a BOS or EOS token, and the tokenizer has neither")
    return context_ids, continuation_ids


@dataclass(frozen=True)
class Scored:
    loglikelihood: float  # nats
    is_greedy: bool  # greedy decoding would produce exactly the continuation
    truncated: bool  # the context was cut from the left to fit the model


@dataclass(frozen=True)
class _Tree:
    """One context and the continuations scored after it: ``inputs`` are the context then each continuation but its
    last token; the continuation tokens are predicted from the positions ``predictors`` (per continuation)."""

    members: list[int]  # indices of the pairs
    inputs: list[int]
    branches: list[int]
    positions: list[int]
    predictors: list[list[int]]
    truncated: bool


def _tree(pairs: Sequence[tuple[list[int], list[int]]], members: list[int], max_len: int) -> _Tree:
    context, continuation = pairs[members[0]]
    whole = (context + continuation)[-(max_len + 1):]  # only a lone pair is ever cut (see loglikelihoods)
    kept = whole[: len(whole) - len(continuation)]
    inputs, branches, positions = list(kept), [0] * len(kept), list(range(len(kept)))
    predictors = []
    for branch, m in enumerate(members, start=1):
        tail = pairs[m][1][:-1]
        predictors.append([len(kept) - 1, *range(len(inputs), len(inputs) + len(tail))])
        inputs += tail
        branches += [branch] * len(tail)
        positions += range(len(kept), len(kept) + len(tail))
    return _Tree(members, inputs, branches, positions, predictors, len(whole) < len(context) + len(continuation))


@torch.no_grad()
def loglikelihoods(model: Transformer, pairs: Sequence[tuple[list[int], list[int]]],
                   batch_tokens: int = BATCH_TOKENS) -> list[Scored]:
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
    trees = sorted((_tree(pairs, members, max_len) for members in groups.values()), key=lambda t: -len(t.inputs))
    rows: list[list[_Tree]] = []  # first fit, longest first: rows of about ROW_TOKENS, a longer tree alone
    room: list[int] = []
    for tree in trees:
        fit = next((r for r, free in enumerate(room) if free >= len(tree.inputs)), None)
        if fit is None:
            rows.append([tree])
            room.append(max(ROW_TOKENS, len(tree.inputs)) - len(tree.inputs))
        else:
            rows[fit].append(tree)
            room[fit] -= len(tree.inputs)
    results: list[Scored | None] = [None] * len(pairs)
    batch: list[list[_Tree]] = []
    for row in rows:  # rows are in falling length order, so a batch's padding is small
        width = sum(len(t.inputs) for t in (batch[0] if batch else row))
        if batch and width * (len(batch) + 1) > batch_tokens:
            _score_rows(model, pairs, batch, results)
            batch = []
        batch.append(row)
    if batch:
        _score_rows(model, pairs, batch, results)
    return results  # type: ignore[return-value]


def _score_rows(model: Transformer, pairs: Sequence[tuple[list[int], list[int]]], rows: list[list[_Tree]],
                results: list[Scored | None]) -> None:
    device = next(model.parameters()).device
    width = max(sum(len(t.inputs) for t in row) for row in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    docs = torch.full((len(rows), width), -1, dtype=torch.long)  # padding: a document of its own
    branches = torch.zeros(len(rows), width, dtype=torch.long)
    positions = torch.zeros(len(rows), width, dtype=torch.long)
    where: list[tuple[int, int, _Tree]] = []  # (row, offset, tree)
    for r, row in enumerate(rows):
        offset = 0
        for d, tree in enumerate(row):
            span = slice(offset, offset + len(tree.inputs))
            ids[r, span], docs[r, span] = torch.as_tensor(tree.inputs), d
            branches[r, span], positions[r, span] = torch.as_tensor(tree.branches), torch.as_tensor(tree.positions)
            where.append((r, offset, tree))
            offset += len(tree.inputs)
    model.check_token_ids(ids)
    packing = Packing(docs.to(device), branches.to(device), positions.to(device))
    hidden = model.hidden_states(ids.to(device), packing=packing)
    rows_index, columns, targets, owners = [], [], [], []
    for r, offset, tree in where:
        for m, predictors in zip(tree.members, tree.predictors):
            rows_index += [r] * len(predictors)
            columns += [offset + p for p in predictors]
            targets += pairs[m][1]
            owners += [m] * len(predictors)
    picked = hidden[torch.as_tensor(rows_index, device=device), torch.as_tensor(columns, device=device)]
    logprobs = F.log_softmax(model.logits(picked).float(), dim=-1)
    target = torch.as_tensor(targets, device=device)
    token_ll = logprobs.gather(-1, target[:, None]).squeeze(-1).tolist()
    greedy = (logprobs.argmax(-1) == target).tolist()
    truncated = {m: tree.truncated for _, _, tree in where for m in tree.members}
    start = 0
    while start < len(owners):
        m = owners[start]
        end = start + len(pairs[m][1])
        total = sum(token_ll[start:end])
        if not math.isfinite(total):
            raise UserError(f"non-finite log-likelihood ({total}): the model produces NaN/inf logits")
        results[m] = Scored(total, all(greedy[start:end]), truncated[m])
        start = end


# ---------------------------------------------------------------------------------------------------- generation
@torch.no_grad()
def greedy_until(model: Transformer, tokenizer: TextTokenizer, prompt: str, stop: Sequence[str] = (),
                 max_new_tokens: int = 256) -> tuple[str, bool]:
    """Greedy continuation of ``prompt`` cut before the first stop string, and whether the prompt was cut from the
    left to leave room for ``max_new_tokens`` (at least one). Stops at EOS and at the context limit."""
    max_len = model.config.max_seq_len
    room = max(1, min(max_new_tokens, max_len - 1))
    ids = [*document_prefix(tokenizer), *tokenizer.encode(prompt)]
    if not ids:
        raise UserError("an empty prompt can only be continued after a BOS or EOS token, and the tokenizer has neither")
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
    skipped = [r for r in records if "skipped" in r]
    records = [r for r in records if "skipped" not in r]
    if not records:
        raise UserError(f"{task.name}: no item can be scored: {skipped[0]['skipped']}")
    indices = [r["index"] for r in records]
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
                      sum(bool(r["truncated"]) for r in records), task.notes, records, by_group, len(skipped))


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float]:
    """The mean and its standard error: sample standard deviation / sqrt(n), as lm-eval's ``mean_stderr``."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)


def _choose_all(model: Transformer, tokenizer: TextTokenizer, items: list[MultipleChoice]) -> list[dict]:
    """One record per item; an item with a choice longer than the model's whole context cannot be scored (lm-eval
    stops there): it is recorded as skipped, with why, and counted, and the metrics are over the others."""
    max_len = model.config.max_seq_len
    encoded = [[encode_pair(tokenizer, c, x) for c, x in zip(item.contexts, item.continuations)] for item in items]
    longest = [max(len(x) for _, x in pairs) for pairs in encoded]
    scored = iter(loglikelihoods(model, [p for pairs, n in zip(encoded, longest) if n <= max_len for p in pairs]))
    records = []
    for item, n in zip(items, longest):
        if n > max_len:
            records.append({"label": item.label, "skipped": f"a choice of {n} tokens outgrows max_seq_len={max_len}"})
            continue
        mine = [next(scored) for _ in item.contexts]
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
