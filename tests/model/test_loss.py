"""The fused, chunked linear + cross-entropy: the same loss and gradients as logits followed by F.cross_entropy (fp32
to 1e-6, bf16 autocast within bf16 rounding), ignore-index, no (tokens, vocab) tensor ever created, and a compiled
training step equal to the eager one."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from slmtrain.model import loss as loss_module
from slmtrain.model import presets
from slmtrain.model.loss import IGNORE_INDEX, linear_cross_entropy
from slmtrain.model.transformer import Transformer

VOCAB = 250  # padded to 256 rows by vocab_multiple_of=64: the padding must stay out of the softmax
ROWS_PER_CHUNK = 5  # 2 x 16 tokens in 7 chunks, the last one short


def tiny_model(**overrides) -> Transformer:
    torch.manual_seed(0)
    return Transformer(presets.get("tiny", vocab_size=VOCAB, vocab_multiple_of=64, **overrides)).train()


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(0, VOCAB, (2, 17), generator=torch.Generator().manual_seed(seed))
    return tokens[:, :-1], tokens[:, 1:]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.float() - expected.float()).norm() / expected.float().norm())


def loss_and_grads(model: Transformer, compute_loss) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = compute_loss()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def plain_loss(model: Transformer, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = model(ids)
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Chunks of ROWS_PER_CHUNK rows, so that the tiny batch is split as a real one is."""
    monkeypatch.setattr(loss_module, "CHUNK_LOGITS", ROWS_PER_CHUNK * VOCAB)


@pytest.mark.parametrize(("bf16", "tolerance"), [(False, 1e-6), (True, 2**-7)])
def test_fused_loss_and_gradients_equal_the_plain_path(bf16: bool, tolerance: float) -> None:
    model = tiny_model(tie_embeddings=False)
    ids, targets = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        plain, plain_grads = loss_and_grads(model, lambda: plain_loss(model, ids, targets))
        fused, fused_grads = loss_and_grads(model, lambda: model(ids, targets=targets))
    assert relative_error(fused, plain) <= tolerance
    for (name, _), fused_grad, plain_grad in zip(model.named_parameters(), fused_grads, plain_grads):
        assert relative_error(fused_grad, plain_grad) <= tolerance, name
    assert fused_grads[-1][VOCAB:].abs().max() == 0  # lm_head's padding rows get no gradient


def test_tied_embedding_gets_both_gradients() -> None:
    model = tiny_model(tie_embeddings=True)
    ids, targets = batch()
    plain, plain_grads = loss_and_grads(model, lambda: plain_loss(model, ids, targets))
    fused, fused_grads = loss_and_grads(model, lambda: model(ids, targets=targets))
    assert relative_error(fused, plain) <= 1e-6
    for fused_grad, plain_grad in zip(fused_grads, plain_grads):
        assert relative_error(fused_grad, plain_grad) <= 1e-6


def test_ignored_targets_add_nothing() -> None:
    model = tiny_model()
    ids, targets = batch()
    masked = targets.clone()
    masked[0, :9] = IGNORE_INDEX  # a prompt that is not trained on
    masked[1, 4] = IGNORE_INDEX
    plain, plain_grads = loss_and_grads(model, lambda: plain_loss(model, ids, masked))
    fused, fused_grads = loss_and_grads(model, lambda: model(ids, targets=masked))
    assert relative_error(fused, plain) <= 1e-6
    for fused_grad, plain_grad in zip(fused_grads, plain_grads):
        assert relative_error(fused_grad, plain_grad) <= 1e-6
    # the mean is over the kept targets only, and the ignored positions' own losses do not enter it
    with torch.no_grad():
        per_token = F.cross_entropy(model(ids).flatten(0, 1), targets.flatten(), reduction="none")
        kept = masked.flatten() != IGNORE_INDEX
        torch.testing.assert_close(fused, per_token[kept].mean(), rtol=1e-6, atol=0)
        changed = masked.clone()
        changed[0, :9] = 0  # different targets at the ignored positions: if they were used, the loss would move
        assert not torch.allclose(model(ids, targets=changed), fused)


def test_without_gradients_the_loss_is_the_same() -> None:
    model = tiny_model()
    ids, targets = batch()
    with torch.no_grad():
        torch.testing.assert_close(model(ids, targets=targets), plain_loss(model, ids, targets), rtol=1e-6, atol=0)


class Allocations(TorchDispatchMode):
    """The sizes (in elements) of the tensors operators allocate while the mode is active, forward and backward:
    views, in-place results and ``out=`` results (an output sharing an input's storage) are not allocations."""

    def __init__(self) -> None:
        super().__init__()
        self.numels: list[int] = []

    @property
    def largest(self) -> int:
        return max(self.numels, default=0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        leaves = pytree.tree_leaves((args, kwargs))
        inputs = {a.untyped_storage().data_ptr() for a in leaves if isinstance(a, torch.Tensor)}
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, torch.Tensor) and tensor.untyped_storage().data_ptr() not in inputs:
                self.numels.append(tensor.numel())
        return out


def test_the_full_logits_never_exist() -> None:
    hidden = torch.randn(64, 16, requires_grad=True)
    weight = torch.randn(1000, 16, requires_grad=True)
    targets = torch.randint(0, 1000, (64,))
    with Allocations() as fused:
        linear_cross_entropy(hidden, weight, targets, chunk_rows=8).backward()
    with Allocations() as plain:
        F.cross_entropy(hidden @ weight.T, targets).backward()
    assert plain.largest == 64 * 1000
    assert fused.largest == max(8 * 1000, weight.numel())  # one chunk of logits, or the head's gradient


@pytest.mark.parametrize(("bf16", "buffers"), [(False, 1), (True, 2)])
def test_every_chunk_reuses_the_same_logits_buffers(bf16: bool, buffers: int) -> None:
    """(rows, vocab) buffers are allocated once per call, not per chunk: fresh ones cost page faults on CPU. Under
    bf16 autocast there are two, the matmul's bf16 output and its fp32 copy; in fp32 one."""
    hidden = torch.randn(64, 16, requires_grad=True)
    weight = torch.randn(1000, 16, requires_grad=True)
    targets = torch.randint(0, 1000, (64,))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), Allocations() as mode:
        linear_cross_entropy(hidden, weight, targets, chunk_rows=8).backward()
    assert mode.numels.count(8 * 1000) == buffers  # 8 chunks


def test_without_gradients_none_is_computed() -> None:
    """Validation (no_grad) computes the loss only: no gradient of the head, though its inputs require one."""
    hidden = torch.randn(64, 16, requires_grad=True)
    weight = torch.randn(1000, 16, requires_grad=True)
    targets = torch.randint(0, 1000, (64,))
    with torch.no_grad(), Allocations() as mode:
        loss = linear_cross_entropy(hidden, weight, targets, chunk_rows=8)
    assert mode.largest == 8 * 1000  # one chunk of logits, never a (1000, 16) gradient
    torch.testing.assert_close(loss, F.cross_entropy(hidden @ weight.T, targets), rtol=1e-6, atol=0)


def test_compiled_training_step_equals_eager() -> None:
    """forward + fused loss + backward + fused AdamW, with the whole model compiled in place as the training module
    does (fullgraph: no graph breaks). aot_eager runs dynamo and AOT autograd, the parts that could change what is
    computed, without inductor's C++ build (tens of seconds on 2 cores); bench/train_step.py runs inductor."""
    ids, targets = batch()
    params = {}
    for compiled in (False, True):
        model = tiny_model(n_layer=1)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
        step = torch.compile(model, fullgraph=True, backend="aot_eager") if compiled else model
        for _ in range(2):
            step(ids, targets=targets).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        params[compiled] = [p.detach().clone() for p in model.parameters()]
    for compiled_param, eager_param in zip(params[True], params[False]):
        torch.testing.assert_close(compiled_param, eager_param, rtol=1e-5, atol=1e-6)


def test_a_second_backward_through_the_fused_loss_is_refused() -> None:
    """The backward scales the kept gradients in place, so handing them out twice would be wrong: it raises."""
    hidden = torch.randn(8, 16, requires_grad=True)
    weight = torch.randn(100, 16, requires_grad=True)
    loss = linear_cross_entropy(hidden, weight, torch.randint(0, 100, (8,)))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="only once"):
        loss.backward()


def test_a_tied_embedding_gradient_is_added_into_the_heads_in_place() -> None:
    """The head's gradient, built in the forward, becomes the tied weight's .grad: autograd adds the embedding's
    gradient into it rather than allocating a third (vocab, d) tensor for the sum, which it must do while the fused
    loss still holds a reference (as it did when the gradients were saved for backward). The vocabulary needs no
    padding here: a padded head is a slice of the embedding, whose backward allocates the padded gradient anyway."""
    torch.manual_seed(0)
    model = Transformer(presets.get("tiny", vocab_size=256, vocab_multiple_of=64, tie_embeddings=True)).train()
    ids, targets = batch()
    loss = model(ids, targets=targets)
    head_gradient = loss.grad_fn.gradients[1].data_ptr()  # its address only: a reference would force the copy
    loss.backward()
    assert model.embed.weight.grad.data_ptr() == head_gradient
