"""Linear + cross-entropy fused over chunks of tokens: the mean next-token loss without the (tokens, vocab) logits.

The plain path projects every hidden state to the vocabulary at once, upcasts the logits to fp32 and keeps them for
the backward: at Llama-3's 128k vocabulary that is 0.5 GiB per thousand tokens, more than the rest of a small model's
step together. Here each chunk of rows is projected, reduced to its loss and turned into its gradients on the spot
(d loss / d logits = softmax - one-hot), so one chunk of logits exists at a time and the backward only scales the
gradients kept from the forward: the head costs the plain path's three matmuls, never a recomputation (the approach
of Liger Kernel's fused linear cross-entropy). Equality with the plain path is tested in tests/model/test_loss.py.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100  # targets with this value add nothing to the loss (prompt tokens in fine-tuning), as in PyTorch

# Rows per chunk x vocabulary: 3 x 2^23 fp32 logits (96 MiB) per chunk, 196 rows at a 128k vocabulary. Every chunk
# re-reads the head and updates its whole gradient, so too few rows cost speed; more gained nothing. Measured with
# bench/train_step.py at 128k (CPU, one thread, the chunk buffers reused): 1.37x transformers' tokens/s at 0.54x its
# peak memory; slmtrain alone at 2^24 logits (130 rows) ran at 1.02x this size's tokens/s, at 2^25 (261 rows) 0.88x;
# 32 rows (before the reuse) 1.5-2x slower than the plain path.
CHUNK_LOGITS = 3 * 2**23


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """``F.cross_entropy(hidden @ weight.T, targets, ignore_index=ignore_index)`` for hidden (N, d), weight (V, d) and
    targets (N,), computed ``chunk_rows`` rows at a time. Under autocast the matmuls run in the autocast dtype, as
    an ``nn.Linear`` would; the softmax is always fp32."""
    device_type = hidden.device.type
    compute_dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
    rows = chunk_rows or max(1, CHUNK_LOGITS // weight.shape[0])
    if not torch.is_grad_enabled():  # validation: the Function would still see inputs that require gradients
        with torch.autocast(device_type, enabled=False):
            return _loss_and_gradients(hidden, weight, targets, compute_dtype, ignore_index, rows,
                                       need_hidden_grad=False, need_weight_grad=False)[0]
    return _LinearCrossEntropy.apply(hidden, weight, targets, compute_dtype, ignore_index, rows)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, compute_dtype, ignore_index, chunk_rows):
        with torch.autocast(hidden.device.type, enabled=False):  # the dtypes are chosen explicitly below
            loss, grad_hidden, grad_weight = _loss_and_gradients(
                hidden, weight, targets, compute_dtype, ignore_index, chunk_rows,
                need_hidden_grad=ctx.needs_input_grad[0], need_weight_grad=ctx.needs_input_grad[1],
            )
        # Kept on ctx, not saved for backward (they are neither inputs nor outputs), so that backward can hand them
        # over: with no reference left here, autograd adds a tied embedding's gradient into the head's in place
        # instead of allocating a third (vocab, d) tensor for the sum.
        ctx.gradients = (grad_hidden, grad_weight)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        # Scaled in place: a copy of the head's gradient would be the step's largest tensor at a large vocabulary.
        # So the gradients can be handed out once only (a second backward, retain_graph=True, is refused).
        if ctx.gradients is None:
            raise RuntimeError("linear_cross_entropy: backward can run only once through the fused loss")
        grad_hidden, grad_weight = ctx.gradients
        ctx.gradients = None
        return (
            None if grad_hidden is None else grad_hidden.mul_(grad_loss),
            None if grad_weight is None else grad_weight.mul_(grad_loss),
            None, None, None, None,
        )


def _loss_and_gradients(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    compute_dtype: torch.dtype,
    ignore_index: int,
    chunk_rows: int,
    need_hidden_grad: bool,
    need_weight_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The mean loss and, when asked for, its gradients with respect to hidden and weight (for an upstream 1)."""
    valid = targets != ignore_index
    count = valid.sum()  # stays on the device: no host sync
    safe_targets = targets.masked_fill(~valid, 0)  # any in-range id; ignored rows are zeroed below
    w = weight.to(compute_dtype)
    total = torch.zeros((), device=hidden.device, dtype=torch.float32)
    grad_hidden = torch.empty_like(hidden) if need_hidden_grad else None
    grad_weight = torch.zeros_like(weight) if need_weight_grad else None
    # One set of (rows, vocab) buffers for every chunk: fresh ones per chunk cost a page fault per 4 KiB touched on
    # CPU (glibc returns large blocks to the OS when they are freed), a quarter of the step at a 128k vocabulary.
    buffer_rows = min(chunk_rows, hidden.shape[0])
    logits_f32 = hidden.new_empty((buffer_rows, w.shape[0]), dtype=torch.float32)
    logits_low = logits_f32 if compute_dtype == torch.float32 else torch.empty_like(logits_f32, dtype=compute_dtype)
    for start in range(0, hidden.shape[0], chunk_rows):
        rows = slice(start, start + chunk_rows)
        h = hidden[rows].to(compute_dtype)
        total += _chunk(h, w, safe_targets[rows], valid[rows], count, logits_low[: h.shape[0]],
                        logits_f32[: h.shape[0]], None if grad_hidden is None else grad_hidden[rows], grad_weight)
    return total / count, grad_hidden, grad_weight


def _chunk(
    h: torch.Tensor,
    w: torch.Tensor,
    targets: torch.Tensor,
    valid: torch.Tensor,
    count: torch.Tensor,
    logits_low: torch.Tensor,
    logits: torch.Tensor,
    grad_hidden: torch.Tensor | None,
    grad_weight: torch.Tensor | None,
) -> torch.Tensor:
    """One chunk's summed loss; its gradients written into grad_hidden (its rows) and added to grad_weight.
    ``logits_low`` (compute dtype) and ``logits`` (fp32; the same tensor when the compute dtype is fp32) are the
    chunk's (rows, vocab) buffers, overwritten here; nothing of that size is allocated."""
    torch.mm(h, w.T, out=logits_low)
    logits.copy_(logits_low)  # copy_ returns at once when both are views of the same fp32 memory
    target_logits = logits.gather(1, targets[:, None]).squeeze(1)
    # logsumexp by hand, in place: the logits become exp(logit - max), the softmax's numerators, with no second
    # (rows, vocab) buffer and one exp pass for both the loss and its gradient
    max_logits = logits.amax(dim=-1, keepdim=True)
    sum_exp = logits.sub_(max_logits).exp_().sum(dim=-1, keepdim=True)
    loss = ((max_logits.squeeze(1) + sum_exp.squeeze(1).log() - target_logits) * valid).sum()
    if grad_hidden is None and grad_weight is None:
        return loss
    # d(mean loss)/d logits = (softmax - one-hot) * scale, scale = 1/count on valid rows and 0 on ignored ones
    scale = (valid / count)[:, None]
    grad_logits_f32 = logits.mul_(scale / sum_exp)
    grad_logits_f32.scatter_add_(1, targets[:, None], -scale)
    grad_logits = logits_low.copy_(grad_logits_f32)  # again no copy in fp32
    if grad_hidden is not None:
        grad_hidden.copy_(grad_logits @ w)
    if grad_weight is not None:
        # Accumulated in the weight's own dtype (fp32 master weights under autocast). On CPU, into an fp32
        # gradient, as one fp32 addmm: faster than the bf16 product plus its addition (131 vs 167 ms at
        # 196 x 128k x 256, one thread) and without their two (vocab, d) temporaries. GPUs keep the autocast
        # dtype's matmul, and so do half-precision gradients (their own dtype is too coarse to accumulate in).
        if h.device.type == "cpu" and grad_weight.dtype == torch.float32:
            grad_weight.addmm_(grad_logits_f32.T, h.float())
        else:
            grad_weight += grad_logits.T @ h
    return loss
