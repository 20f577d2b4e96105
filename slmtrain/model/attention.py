"""Attention backends behind one function, proven equal by tests/model/test_attention.py.

``attend(q, k, v, backend=..., doc_ids=...)`` takes queries ``(B, H, T, D)`` and keys/values ``(B, KV, S, D)`` with
``H`` a multiple of ``KV`` (GQA/MQA) and ``S >= T``: the ``T`` queries are the last ``T`` positions of the ``S`` keys
(the KV-cache case), so causality is aligned bottom-right. With ``query_positions`` (B, T) each row's queries sit at
their own positions instead (a ragged KV cache: a batch of requests of different lengths) and attend to the keys at
or before them. ``doc_ids`` (B, T) keeps packed documents apart; ``branch_ids`` (B, T) makes a document a tree: a
token of branch b > 0 sees the document's branch-0 tokens (a shared prefix) and its own branch's, never another's
(the choices of one question scored after one pass over the question).

- ``sdpa``: ``F.scaled_dot_product_attention`` with ``enable_gqa`` (no repeated K/V materialised); the default.
- ``flash``: flash-attn 2 when importable and on CUDA; otherwise, or with document masking, SDPA computes the same.
- ``eager``: the plain reference: repeat K/V, softmax(QK^T / sqrt(D)) V in fp32.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

HALF_DTYPES = (torch.float16, torch.bfloat16)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    backend: str = "sdpa",
    doc_ids: torch.Tensor | None = None,
    branch_ids: torch.Tensor | None = None,
    query_positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention; with ``doc_ids`` (B, T) also no attention across document boundaries (packed samples),
    with ``branch_ids`` none across the branches of a document."""
    aligned = doc_ids is None and branch_ids is None and query_positions is None
    if backend == "flash" and aligned and q.is_cuda and _flash_attn_func() is not None:
        return _flash(q, k, v)
    if backend == "eager":
        return _eager(q, k, v, doc_ids, branch_ids, query_positions)
    return _sdpa(q, k, v, doc_ids, branch_ids, query_positions)


def attention_mask(t: int, s: int, device: torch.device, doc_ids: torch.Tensor | None = None,
                   query_positions: torch.Tensor | None = None,
                   branch_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean mask (True = attend): (T, S), or (B, 1, T, S) with documents, branches or per-row query positions."""
    key_pos = torch.arange(s, device=device)
    if query_positions is not None:
        return (key_pos[None, None, :] <= query_positions[:, :, None])[:, None]
    query_pos = torch.arange(s - t, s, device=device)[:, None]
    mask = key_pos[None, :] <= query_pos
    for ids in (doc_ids, branch_ids):
        if ids is not None and ids.shape[-1] != s:
            raise ValueError("document and branch masking need ids for every key position (no KV cache)")
    if doc_ids is not None:
        mask = mask & (doc_ids[:, None, -t:, None] == doc_ids[:, None, None, :])
    if branch_ids is not None:
        keys = branch_ids[:, None, None, :]
        mask = mask & ((keys == 0) | (keys == branch_ids[:, None, -t:, None]))
    return mask


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, doc_ids: torch.Tensor | None,
          branch_ids: torch.Tensor | None, query_positions: torch.Tensor | None) -> torch.Tensor:
    if q.device.type == "cpu" and q.dtype in HALF_DTYPES and not torch.is_autocast_enabled("cpu"):
        # torch's CPU attention kernels run 2-10x slower in fp16/bf16 than in fp32 (measured from 48 to 2,048 keys,
        # one decoded token and whole prompts): attend in fp32, return the half-precision result. Not under
        # autocast, which casts attention's inputs back to its own dtype (and trains as fast either way)
        return _sdpa(q.float(), k.float(), v.float(), doc_ids, branch_ids, query_positions).to(q.dtype)
    t, s = q.shape[-2], k.shape[-2]
    gqa = q.shape[1] != k.shape[1]
    if doc_ids is None and branch_ids is None and query_positions is None and t in (1, s):
        # the fused causal kernels need no mask tensor, and one query at the last position sees every key
        return F.scaled_dot_product_attention(q, k, v, is_causal=t > 1, enable_gqa=gqa)
    mask = attention_mask(t, s, q.device, doc_ids, query_positions, branch_ids)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


def _eager(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, doc_ids: torch.Tensor | None,
           branch_ids: torch.Tensor | None, query_positions: torch.Tensor | None) -> torch.Tensor:
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)
    v = v.repeat_interleave(groups, dim=1)
    t, s = q.shape[-2], k.shape[-2]
    scores = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(q.shape[-1])
    mask = attention_mask(t, s, q.device, doc_ids, query_positions, branch_ids)
    scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(dim=-1) @ v.float()).to(q.dtype)


def _flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # flash-attn takes (B, T, H, D), handles GQA natively and aligns causality bottom-right when T < S.
    out = _flash_attn_func()(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True)
    return out.transpose(1, 2)


@functools.cache
def _flash_attn_func():
    """flash_attn_func if flash-attn is installed, else None (imported lazily: it cannot build on CPU machines)."""
    try:
        from flash_attn import flash_attn_func
    except ImportError:
        return None
    return flash_attn_func


def flash_available() -> bool:
    return _flash_attn_func() is not None and torch.cuda.is_available()
