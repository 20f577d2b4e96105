"""The decoder-only transformer, readable top to bottom: norm, RoPE, attention, MLP (or a Mixture-of-Experts from
slmtrain.model.moe), block, model, generate().

No distribution or compilation code lives here: `slmtrain.train.parallel` applies torch.compile, DDP and FSDP to an
unchanged model. Weight layout follows the Llama family (pre-norm, RoPE with rotate-half, gated MLP) so that
`slmtrain.model.formats.hf` maps it to transformers one tensor at a time; q/k/v and gate/up are fused into single matmuls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from slmtrain.model.attention import attend
from slmtrain.model.config import ModelConfig, RopeScaling
from slmtrain.model.loss import linear_cross_entropy
from slmtrain.model.moe import Experts, MoE


def make_norm(config: ModelConfig, dim: int) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(dim, eps=config.norm_eps)
    return nn.LayerNorm(dim, eps=config.norm_eps)


# ------------------------------------------------------------------------------------------------------------ RoPE
def rope_inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling) -> torch.Tensor:
    """Per-pair rotation frequencies, with linear (position interpolation) or Llama-3 frequency scaling."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if scaling.kind == "linear":
        inv_freq = inv_freq / scaling.factor
    elif scaling.kind == "llama3":
        # Llama 3.1: long wavelengths are divided by `factor`, short ones kept, the band between interpolated.
        low_freq_wavelen = scaling.original_max_seq_len / scaling.low_freq_factor
        high_freq_wavelen = scaling.original_max_seq_len / scaling.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        smooth = (scaling.original_max_seq_len / wavelen - scaling.low_freq_factor) / (
            scaling.high_freq_factor - scaling.low_freq_factor
        )
        interpolated = (1 - smooth) * inv_freq / scaling.factor + smooth * inv_freq
        inv_freq = torch.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
        between = (wavelen <= low_freq_wavelen) & (wavelen >= high_freq_wavelen)
        inv_freq = torch.where(between, interpolated, inv_freq)
    return inv_freq.float()


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables in fp32 for the given positions: (T, head_dim) for positions (T,), or (B, 1, T, head_dim)
    for per-row positions (B, T), one table per row shared by its heads."""
    freqs = positions.float()[..., None] * inv_freq
    angles = torch.cat((freqs, freqs), dim=-1)
    if positions.dim() == 2:
        angles = angles[:, None]
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, D) by position: the rotate-half convention of Llama/transformers."""
    first, second = x.chunk(2, dim=-1)
    rotated = torch.cat((-second, first), dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


# -------------------------------------------------------------------------------------------------------- packing
@dataclass(frozen=True)
class Packing:
    """How the tokens of a (B, T) batch relate, when not one causal sequence per row: ``doc_ids`` (B, T) keeps packed
    documents apart; ``branch_ids`` (B, T) lets branch b > 0 of a document see only its branch-0 prefix and itself;
    ``positions`` (B, T) are each token's RoPE / learned positions (a branch restarts where its prefix ends)."""

    doc_ids: torch.Tensor | None = None
    branch_ids: torch.Tensor | None = None
    positions: torch.Tensor | None = None


# ------------------------------------------------------------------------------------------------------- KV cache
class KVCache:
    """Preallocated keys and values of every layer for incremental decoding. Its rows share one ``length``, except
    in a ``ragged`` cache (a server's batch of independent requests): there each row has its own length
    (``row_lengths``), a forward pass takes the first ``used_rows`` rows and appends to each at that row's end, and
    each row attends only to its own filled positions."""

    def __init__(self, config: ModelConfig, batch: int, max_len: int, device: torch.device, dtype: torch.dtype,
                 ragged: bool = False):
        shape = (config.n_layer, batch, config.kv_heads, max_len, config.head_dim_)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.length = 0  # positions already filled, valid for every layer once a forward pass completes
        self.row_lengths = torch.zeros(batch, dtype=torch.long, device=device) if ragged else None
        self.used_rows = batch  # ragged: rows 0..used_rows-1 take part in a forward pass
        self.query_positions: torch.Tensor | None = None  # ragged: (B, T) positions of the pass under way
        self.end = 0  # ragged: one past the last position any row writes in the pass under way

    def positions(self, t: int) -> torch.Tensor:
        """Start a pass of ``t`` tokens: their positions, (T,), or (B, T) in a ragged cache."""
        steps = torch.arange(t, device=self.keys.device)
        if self.row_lengths is None:
            self.end = self.length + t
            return self.length + steps
        self.query_positions = self.row_lengths[: self.used_rows, None] + steps
        self.end = int(self.query_positions[:, -1].max()) + 1
        return self.query_positions

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.end > self.max_len:
            raise ValueError(f"KV cache full: {self.end} positions needed, {self.max_len} allocated")
        if self.row_lengths is None:
            self.keys[layer, :, :, self.length : self.end] = k
            self.values[layer, :, :, self.length : self.end] = v
        else:  # row b's t new entries go to positions query_positions[b]; (B, T) indices around a slice: (B, T, KV, D)
            rows = torch.arange(k.shape[0], device=k.device)[:, None]
            self.keys[layer][rows, :, self.query_positions] = k.transpose(1, 2)
            self.values[layer][rows, :, self.query_positions] = v.transpose(1, 2)
            used = slice(0, self.used_rows)
            return self.keys[layer, used, :, : self.end], self.values[layer, used, :, : self.end]
        return self.keys[layer, :, :, : self.end], self.values[layer, :, :, : self.end]

    def advance(self, t: int) -> None:
        """The pass's ``t`` tokens are in every layer."""
        self.length += t
        if self.row_lengths is not None:
            self.row_lengths[: self.used_rows] += t
            self.query_positions = None

    # Row operations of a ragged cache, for a server's continuous batching: a request's prompt is read in a cache of
    # its own and copied into a free row; a finished request's row is refilled by the last row, so that the rows in
    # use stay 0..used_rows-1; the cache grows with the longest request rather than holding the whole context.
    def copy_row(self, row: int, source: KVCache, source_row: int = 0) -> None:
        """Row ``row`` becomes ``source``'s row ``source_row``: its filled entries and its length. ``source`` may be
        this cache or another of the same model, ragged or not."""
        if self.row_lengths is None:
            raise ValueError("copy_row needs a ragged cache: the rows of a plain cache share one length")
        length = source.length if source.row_lengths is None else int(source.row_lengths[source_row])
        if length > self.max_len:
            raise ValueError(f"KV cache full: {length} positions needed, {self.max_len} allocated")
        self.keys[:, row, :, :length] = source.keys[:, source_row, :, :length]
        self.values[:, row, :, :length] = source.values[:, source_row, :, :length]
        self.row_lengths[row] = length

    def move_row(self, source_row: int, row: int) -> None:
        """Row ``source_row`` moves to ``row`` (same entries, same length) and is left empty."""
        self.copy_row(row, self, source_row)
        self.clear_row(source_row)

    def clear_row(self, row: int) -> None:
        """Row ``row`` holds nothing; its stale entries stay, unread, until the row is filled again."""
        if self.row_lengths is None:
            raise ValueError("clear_row needs a ragged cache: the rows of a plain cache share one length")
        self.row_lengths[row] = 0

    def grow(self, max_len: int) -> None:
        """Reallocate for ``max_len`` positions per row, keeping every entry and length."""
        if max_len < self.max_len:
            raise ValueError(f"a KV cache only grows: {max_len} positions asked, {self.max_len} held")
        keys, values = self.keys, self.values
        shape = (*keys.shape[:3], max_len, keys.shape[4])
        self.keys, self.values = keys.new_zeros(shape), values.new_zeros(shape)
        self.keys[:, :, :, : self.max_len] = keys
        self.values[:, :, :, : self.max_len] = values
        self.max_len = max_len


# ------------------------------------------------------------------------------------------------------ the block
class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head, self.kv_heads, self.head_dim = config.n_head, config.kv_heads, config.head_dim_
        self.backend = config.attention_backend
        qkv_out = (self.n_head + 2 * self.kv_heads) * self.head_dim
        self.qkv = nn.Linear(config.d_model, qkv_out, bias=config.qkv_bias)
        self.out = nn.Linear(self.n_head * self.head_dim, config.d_model, bias=False)
        # per head (Qwen3) or over the whole q and k projections (OLMoE)
        self.qk_norm_per_head = config.qk_norm_scope == "head"
        q_dim, k_dim = (self.head_dim, self.head_dim) if self.qk_norm_per_head else (
            self.n_head * self.head_dim, self.kv_heads * self.head_dim)
        self.q_norm = make_norm(config, q_dim) if config.qk_norm else None
        self.k_norm = make_norm(config, k_dim) if config.qk_norm else None

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        packing: Packing,
        cache: KVCache | None,
        layer: int,
    ) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(x).split(
            [self.n_head * self.head_dim, self.kv_heads * self.head_dim, self.kv_heads * self.head_dim], dim=-1
        )
        if self.q_norm is not None and not self.qk_norm_per_head:
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(b, t, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        if self.q_norm is not None and self.qk_norm_per_head:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        query_positions = None
        if cache is not None:
            k, v = cache.update(layer, k, v)
            query_positions = cache.query_positions
        y = attend(q, k, v, backend=self.backend, doc_ids=packing.doc_ids, branch_ids=packing.branch_ids,
                   query_positions=query_positions)
        return self.out(y.transpose(1, 2).reshape(b, t, self.n_head * self.head_dim))


class MLP(nn.Module):
    """Gated (SwiGLU, GeGLU: act(x W_gate) * (x W_up)) or plain (GELU, ReLU) feed-forward."""

    def __init__(self, config: ModelConfig, width: int | None = None):
        super().__init__()
        self.gated = config.gated_ffn
        self.act = ACTIVATIONS[config.ffn]
        width = config.ffn_dim if width is None else width
        self.up = nn.Linear(config.d_model, (2 if self.gated else 1) * width, bias=False)
        self.down = nn.Linear(width, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            gate, up = self.up(x).chunk(2, dim=-1)
            return self.down(self.act(gate) * up)
        return self.down(self.act(self.up(x)))


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


ACTIVATIONS = {"swiglu": F.silu, "geglu": _gelu_tanh, "gelu": F.gelu, "relu": F.relu}


def make_ffn(config: ModelConfig, layer: int) -> nn.Module:
    """The layer's feed-forward: a dense MLP, or a Mixture-of-Experts whose shared experts are one MLP as wide as
    all of them together (the same function as separate shared experts summed)."""
    if not config.is_moe_layer(layer):
        return MLP(config)
    shared = MLP(config, config.shared_ffn_dim) if config.moe.shared_experts else None
    return MoE(config, ACTIVATIONS[config.ffn], shared)


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.attn_norm = make_norm(config, config.d_model)
        self.attn = Attention(config)
        self.mlp_norm = make_norm(config, config.d_model)
        self.mlp = make_ffn(config, layer)

    def forward(self, x, rope, packing, cache, layer):
        x = x + self.attn(self.attn_norm(x), rope, packing, cache, layer)
        return x + self.mlp(self.mlp_norm(x))


# ------------------------------------------------------------------------------------------------------ the model
class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.padded_vocab_size, config.d_model)
        self.pos_embed = nn.Embedding(config.max_seq_len, config.d_model) if config.position == "learned" else None
        self.blocks = nn.ModuleList(Block(config, layer) for layer in range(config.n_layer))
        self.norm = make_norm(config, config.d_model)
        self.lm_head = nn.Linear(config.d_model, config.padded_vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        inv_freq = rope_inverse_frequencies(config.head_dim_, config.rope_theta, config.rope_scaling)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """N(0, init_std) for every matrix; residual output projections scaled by 1/sqrt(2 n_layer); zero biases;
        unit norms. Called at construction and after materialising a model built on the meta device."""
        std = self.config.init_std
        residual_std = std / math.sqrt(2 * self.config.n_layer) if self.config.scaled_residual_init else std
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                is_residual_out = name.endswith(("attn.out", "mlp.down", "mlp.shared.down"))
                nn.init.normal_(module.weight, mean=0.0, std=residual_std if is_residual_out else std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, (nn.RMSNorm, nn.LayerNorm)):
                module.reset_parameters()
            elif isinstance(module, Experts):
                module.reset_parameters(std, residual_std)
            elif isinstance(module, MoE) and module.router_bias is not None:
                module.router_bias.zero_()
        self.inv_freq.copy_(
            rope_inverse_frequencies(self.config.head_dim_, self.config.rope_theta, self.config.rope_scaling)
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        doc_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        targets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, vocab_size). ``doc_ids`` (B, T) masks attention across packed documents. With ``targets``
        (B, T) it returns the mean cross-entropy over the targets that are not ``loss.IGNORE_INDEX`` instead, computed
        chunk by chunk (slmtrain.model.loss) so that the (B, T, vocab) logits never exist."""
        x = self.hidden_states(input_ids, doc_ids=doc_ids, cache=cache)
        if targets is not None:
            head = self.lm_head.weight
            if self.config.padded_vocab_size != self.config.vocab_size:  # sliced only then: the slice's backward
                head = head[: self.config.vocab_size]  # writes a full-size gradient; padding stays out of the softmax
            return linear_cross_entropy(x.flatten(0, 1), head, targets.flatten())
        return self.logits(x)

    def hidden_states(self, input_ids: torch.Tensor, *, doc_ids: torch.Tensor | None = None,
                      cache: KVCache | None = None, packing: Packing | None = None) -> torch.Tensor:
        """The final normed hidden states (B, T, d_model): what the head turns into logits. A caller that needs
        logits at a few positions only (scoring continuations) applies :meth:`logits` to those. ``packing`` gives
        explicit positions and document / branch ids (a tree of continuations sharing a prefix, without a cache)."""
        t = input_ids.shape[1]
        packing = packing or Packing(doc_ids=doc_ids)
        if packing.positions is not None:
            positions = packing.positions
            end = int(positions.max()) + 1 if positions.numel() else 0
        else:
            positions = torch.arange(t, device=input_ids.device) if cache is None else cache.positions(t)
            end = t if cache is None else cache.end
        if end > self.config.max_seq_len:
            raise ValueError(f"sequence of {end} tokens exceeds max_seq_len={self.config.max_seq_len}")
        x = self.embed(input_ids)
        rope = None
        if self.pos_embed is not None:
            x = x + self.pos_embed(positions)
        else:
            rope = rope_cos_sin(positions, self.inv_freq)
        for layer, block in enumerate(self.blocks):
            x = block(x, rope, packing, cache, layer)
        if cache is not None:
            cache.advance(t)
        return self.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(hidden)
        if self.config.padded_vocab_size != self.config.vocab_size:
            logits = logits[..., : self.config.vocab_size]
        return logits

    def check_token_ids(self, input_ids: torch.Tensor) -> None:
        """A clear error for ids outside the vocabulary (an embedding lookup would fail obscurely)."""
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= self.config.vocab_size):
            raise ValueError(
                f"token id out of range: ids span [{int(input_ids.min())}, {int(input_ids.max())}] "
                f"but vocab_size={self.config.vocab_size}"
            )

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def moe_layers(self) -> list[MoE]:
        return [block.mlp for block in self.blocks if isinstance(block.mlp, MoE)]

    def moe_loss(self) -> torch.Tensor | float:
        """The balancing losses (auxiliary + z-loss, weighted) of the last training forward's MoE layers, to add
        to the language-modelling loss; 0.0 for a dense model."""
        return sum((layer.balance_loss for layer in self.moe_layers()), 0.0)

    def estimate_flops(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward), from the config's exact accounting."""
        return self.config.train_flops_per_token(seq_len)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_id: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Continue each row of ``input_ids`` (B, T). ``temperature=0`` is greedy. Uses a KV cache; rows that emit
        ``eos_id`` keep emitting it. Returns (B, T + new) token ids, where new = ``max_new_tokens`` unless the
        context window ends first (new = max_seq_len - T) or every row has emitted ``eos_id``."""
        self.check_token_ids(input_ids)
        b, t = input_ids.shape
        total = min(t + max_new_tokens, self.config.max_seq_len)
        dtype = next(self.parameters()).dtype
        cache = KVCache(self.config, b, total, input_ids.device, dtype)
        out = input_ids
        logits = self(input_ids, cache=cache)[:, -1]
        finished = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
        for _ in range(total - t):
            next_id = sample_next(logits, temperature, top_k, top_p, generator)
            if eos_id is not None:
                next_id = torch.where(finished, torch.full_like(next_id, eos_id), next_id)
                finished |= next_id == eos_id
            out = torch.cat((out, next_id[:, None]), dim=1)
            if eos_id is not None and bool(finished.all()):
                break
            if out.shape[1] < total:
                logits = self(next_id[:, None], cache=cache)[:, -1]
        return out


def sample_next(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """One token per row from (B, V) logits: greedy at temperature 0, else top-k then nucleus (top-p) sampling."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative - sorted_logits.softmax(dim=-1) > top_p  # keep the smallest prefix reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
