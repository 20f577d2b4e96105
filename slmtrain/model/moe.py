"""Mixture-of-Experts feed-forward: router, experts, balancing.

Dropless routing, written for speed: the (token, expert) assignments are sorted by expert so that each expert
multiplies its whole group of tokens with one matmul, and the results are scattered back with one ``index_add_``.
There is no loop over tokens and no expert computes a token it was not chosen for; the only loop is over experts.

Balancing: the Switch/Mixtral auxiliary loss E * sum_i f_i P_i (f_i the fraction of assignments expert i received,
P_i its mean router probability: 1.0 when perfectly balanced), the ST-MoE router z-loss mean(logsumexp(logits)^2),
and DeepSeek-V3's auxiliary-loss-free balancing, a per-expert bias added to the scores only when choosing experts,
moved after each optimizer step towards equal load (``update_router_bias``). The bias is a buffer, so it travels in
the state dict and in checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from slmtrain.model.config import ModelConfig

Activation = Callable[[torch.Tensor], torch.Tensor]


def activate(hidden: torch.Tensor, act: Activation, gated: bool) -> torch.Tensor:
    """The FFN's nonlinearity on up-projected rows: act(gate) * value for gated FFNs (gate columns first)."""
    if gated:
        gate, value = hidden.chunk(2, dim=-1)
        return act(gate) * value
    return act(hidden)


class ExpertGroup(nn.Module):
    """The routed experts of one layer. Subclasses say where an expert's weights come from (``expert_weights``):
    resident parameters here, a memory-mapped file in :mod:`slmtrain.model.offload`."""

    def __init__(self, num_experts: int, act: Activation, gated: bool):
        super().__init__()
        self.num_experts, self.act, self.gated = num_experts, act, gated

    def expert_weights(self, expert: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def weights_of(self, experts: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(up, down) of each listed expert, in order."""
        return [self.expert_weights(e) for e in experts]

    def forward(self, tokens: torch.Tensor, expert_ids: torch.Tensor, weights: torch.Tensor,
                counts: list[int]) -> torch.Tensor:
        """sum_j weights[n, j] * expert_{expert_ids[n, j]}(tokens[n]) for every token n: (N, D)."""
        top_k = expert_ids.shape[1]
        order = expert_ids.flatten().argsort(stable=True)  # assignments grouped by expert, in token order within
        token_of = order // top_k
        used = [e for e, count in enumerate(counts) if count]
        experts = self.weights_of(used)
        compute_dtype = experts[0][0].dtype  # the weights' (bf16 under autocast): one cast of the tokens
        groups = tokens[token_of].to(compute_dtype).split([counts[e] for e in used])
        # one matmul per expert and projection; the nonlinearity once over every group
        hidden = activate(torch.cat([x @ up.t() for x, (up, _) in zip(groups, experts)]), self.act, self.gated)
        out = torch.cat([h @ down.t() for h, (_, down) in zip(hidden.split([counts[e] for e in used]), experts)])
        weighted = out * weights.flatten()[order, None].to(compute_dtype)
        return torch.zeros_like(tokens).index_add_(0, token_of, weighted.to(tokens.dtype))


class Experts(ExpertGroup):
    """Resident experts stored as two 3D parameters (the layout of transformers' fused MoE experts), so that
    every expert's gradient lives in one tensor and DDP never sees an unused parameter."""

    def __init__(self, num_experts: int, d_model: int, width: int, act: Activation, gated: bool):
        super().__init__(num_experts, act, gated)
        self.up = nn.Parameter(torch.empty(num_experts, (2 if gated else 1) * width, d_model))
        self.down = nn.Parameter(torch.empty(num_experts, d_model, width))

    def expert_weights(self, expert: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.up[expert], self.down[expert]

    def weights_of(self, experts: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        up, down = self.up, self.down
        if torch.is_autocast_enabled(up.device.type):  # one cast of each 3D weight, not one per expert slice
            dtype = torch.get_autocast_dtype(up.device.type)
            up, down = up.to(dtype), down.to(dtype)
        # unbind: one backward op stacking every expert's gradient, not a full-size zero tensor per indexed expert
        ups, downs = up.unbind(0), down.unbind(0)
        return [(ups[e], downs[e]) for e in experts]

    @torch.no_grad()
    def reset_parameters(self, std: float, residual_std: float) -> None:
        nn.init.normal_(self.up, mean=0.0, std=std)
        nn.init.normal_(self.down, mean=0.0, std=residual_std)


class MoE(nn.Module):
    """Router + routed experts (+ shared experts, optionally gated). After a training forward it holds
    ``balance_loss`` (to add to the loss) and, for logging, the router's statistics; ``load`` (tokens per expert
    of the last forward) is kept in every mode."""

    def __init__(self, config: ModelConfig, act: Activation, shared: nn.Module | None):
        super().__init__()
        moe = config.moe
        assert moe is not None
        self.top_k, self.score, self.renormalize = moe.top_k, moe.score, moe.renormalize
        self.aux_loss_coef, self.z_loss_coef, self.bias_update_rate = (moe.aux_loss_coef, moe.z_loss_coef,
                                                                       moe.bias_update_rate)
        self.router = nn.Linear(config.d_model, moe.experts, bias=False)
        self.experts: ExpertGroup = Experts(moe.experts, config.d_model, config.expert_ffn_dim, act,
                                            config.gated_ffn)
        self.shared = shared
        self.shared_gate = nn.Linear(config.d_model, 1, bias=False) if moe.shared_gate else None
        self.router_bias: torch.Tensor | None
        if moe.loss_free_bias:
            self.register_buffer("router_bias", torch.zeros(moe.experts))
        else:
            self.router_bias = None
        # Set by forward (the losses and entropy by a training forward only): plain attributes, not buffers.
        self.balance_loss: torch.Tensor | float = 0.0
        self.aux_loss: torch.Tensor | float = 0.0
        self.z_loss: torch.Tensor | float = 0.0
        self.router_entropy: torch.Tensor | float = 0.0
        self.load: torch.Tensor | None = None

    @property
    def num_experts(self) -> int:
        return self.router.out_features

    def route(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Router logits and scores (N, E) in fp32, chosen experts (N, k) and their weights (N, k)."""
        logits = self.router(tokens).float()
        scores = logits.softmax(dim=-1) if self.score == "softmax" else logits.sigmoid()
        choice = scores if self.router_bias is None else scores + self.router_bias  # the bias only chooses
        expert_ids = choice.topk(self.top_k, dim=-1).indices
        weights = scores.gather(-1, expert_ids)
        if self.renormalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return logits, scores, expert_ids, weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(-1, x.shape[-1])
        logits, scores, expert_ids, weights = self.route(tokens)
        load = torch.bincount(expert_ids.flatten(), minlength=self.num_experts)
        y = self.experts(tokens, expert_ids, weights, load.tolist())
        if self.shared is not None:
            shared = self.shared(tokens)
            y = y + (shared if self.shared_gate is None else torch.sigmoid(self.shared_gate(tokens)) * shared)
        self.load = load.detach().float()
        if self.training:
            self._balance(logits, scores, load)
        return y.view_as(x)

    def _balance(self, logits: torch.Tensor, scores: torch.Tensor, load: torch.Tensor) -> None:
        probs = scores / scores.sum(dim=-1, keepdim=True)  # sigmoid scores normalised to a distribution
        fraction = load.float() / load.sum()
        self.aux_loss = self.num_experts * (fraction * probs.mean(dim=0)).sum()
        self.z_loss = torch.logsumexp(logits, dim=-1).square().mean()
        self.balance_loss = self.aux_loss_coef * self.aux_loss + self.z_loss_coef * self.z_loss
        with torch.no_grad():
            self.router_entropy = -(probs * probs.clamp_min(1e-12).log()).sum(dim=-1).mean()

    @torch.no_grad()
    def update_router_bias(self, load: torch.Tensor) -> None:
        """Loss-free balancing (DeepSeek-V3): raise the bias of experts that received fewer than the mean number of
        tokens, lower it for those above, by ``bias_update_rate``. ``load``: tokens per expert over the step (all
        ranks summed, so that every rank moves the same way)."""
        if self.router_bias is not None:
            self.router_bias += self.bias_update_rate * torch.sign(load.mean() - load).to(self.router_bias)
