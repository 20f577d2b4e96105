"""ModelConfig: every architectural knob of the decoder-only transformer, its validation, and exact accounting.

The accounting (parameters, FLOPs per token, KV-cache and weight bytes) is computed from the config alone, without
allocating weights, so the scaling calculator and the training planner can reason about 5B models on a laptop.
Tests check it against the parameter count of an instantiated model and of released checkpoints. A Mixture-of-Experts
model (``moe``) has two sizes: every expert counts towards its parameters and the memory its weights occupy, only
the experts a token is routed to count towards FLOPs and the weight bytes read per decoded token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from slmtrain.config import check_choice, require

FFN_KINDS = ("swiglu", "geglu", "gelu", "relu")
NORM_KINDS = ("rmsnorm", "layernorm")
POSITION_KINDS = ("rope", "learned")
ATTENTION_BACKENDS = ("sdpa", "flash", "eager")
ROPE_SCALING_KINDS = ("none", "linear", "llama3")
QK_NORM_SCOPES = ("head", "projection")
ROUTER_SCORES = ("softmax", "sigmoid")
# Bytes per weight when stored at each precision (int4 is the packed payload; group scales are not counted).
BYTES_PER_WEIGHT = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "int8": 1.0, "int4": 0.5}


@dataclass
class RopeScaling:
    """RoPE frequency scaling for context extension: ``linear`` (position interpolation) or ``llama3``."""

    kind: Literal["none", "linear", "llama3"] = "none"
    factor: float = 1.0
    low_freq_factor: float = 1.0  # llama3 only
    high_freq_factor: float = 4.0  # llama3 only
    original_max_seq_len: int = 8192  # llama3 only

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, ROPE_SCALING_KINDS)
        require(self.factor >= 1.0, "factor", f"must be >= 1, got {self.factor}")
        if self.kind == "llama3":
            require(self.high_freq_factor > self.low_freq_factor, "high_freq_factor", "must exceed low_freq_factor")
            require(self.original_max_seq_len > 0, "original_max_seq_len", "must be positive")


@dataclass
class MoEConfig:
    """Mixture-of-Experts feed-forward layers: a router sends each token to ``top_k`` of ``experts`` FFNs (dropless:
    no capacity limit), beside optional shared experts that see every token."""

    experts: int = 8  # routed experts per MoE layer
    top_k: int = 2  # experts each token is routed to
    expert_ffn_hidden: int | None = None  # FFN width of each routed expert; None: the model's ffn_dim
    shared_experts: int = 0  # experts every token passes through besides its routed ones (DeepSeek, Qwen2-MoE)
    shared_ffn_hidden: int | None = None  # FFN width of each shared expert; None: expert_ffn_hidden
    shared_gate: bool = False  # scale the shared experts' output by sigmoid(x . w) (Qwen2-MoE)
    dense_layers: int = 0  # the first k layers keep a dense FFN of ffn_dim (DeepSeek's first_k_dense_replace)
    score: Literal["softmax", "sigmoid"] = "softmax"  # router score function over the experts
    renormalize: bool = True  # divide the top-k scores by their sum (Mixtral); false: use them as they are (OLMoE)
    aux_loss_coef: float = 0.01  # Switch/Mixtral load-balancing loss E * sum_i f_i P_i; 0 disables it
    z_loss_coef: float = 0.0  # router z-loss mean(logsumexp(logits)^2) (ST-MoE); 0 disables it
    loss_free_bias: bool = False  # DeepSeek-V3 auxiliary-loss-free balancing: a per-expert bias on the choice
    bias_update_rate: float = 1e-3  # loss_free_bias: the bias step per optimizer step (DeepSeek-V3's gamma)

    def __post_init__(self) -> None:
        require(self.experts > 0, "experts", f"must be positive, got {self.experts} (leave moe unset for a dense "
                                             "model)")
        require(0 < self.top_k <= self.experts, "top_k",
                f"must be between 1 and experts={self.experts}, got {self.top_k}")
        if self.expert_ffn_hidden is not None:
            require(self.expert_ffn_hidden > 0, "expert_ffn_hidden", f"must be positive, got {self.expert_ffn_hidden}")
        require(self.shared_experts >= 0, "shared_experts", f"must be >= 0, got {self.shared_experts}")
        if self.shared_ffn_hidden is not None:
            require(self.shared_experts > 0, "shared_ffn_hidden", "set, but shared_experts=0: there is no shared "
                                                                  "expert to give a width")
            require(self.shared_ffn_hidden > 0, "shared_ffn_hidden", f"must be positive, got {self.shared_ffn_hidden}")
        require(not self.shared_gate or self.shared_experts > 0, "shared_gate", "needs shared_experts > 0")
        require(self.dense_layers >= 0, "dense_layers", f"must be >= 0, got {self.dense_layers}")
        check_choice("score", self.score, ROUTER_SCORES)
        require(self.aux_loss_coef >= 0, "aux_loss_coef", f"must be >= 0, got {self.aux_loss_coef}")
        require(self.z_loss_coef >= 0, "z_loss_coef", f"must be >= 0, got {self.z_loss_coef}")
        require(self.bias_update_rate > 0, "bias_update_rate", f"must be positive, got {self.bias_update_rate}")


@dataclass
class ModelConfig:
    vocab_size: int = 32000
    n_layer: int = 12
    d_model: int = 768
    n_head: int = 12
    n_kv_head: int | None = None  # None: equal to n_head (MHA); 1: MQA; in between: GQA
    head_dim: int | None = None  # None: d_model // n_head
    ffn_hidden: int | None = None  # explicit FFN width; None: round_up(ffn_mult * d_model, ffn_multiple_of)
    ffn_mult: float | None = None  # None: 8/3 for gated FFNs (same parameters as a 4x plain MLP), 4 otherwise
    ffn_multiple_of: int = 64
    ffn: Literal["swiglu", "geglu", "gelu", "relu"] = "swiglu"
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    norm_eps: float = 1e-5
    qk_norm: bool = False  # RMS/LayerNorm over each head's queries and keys (per head_dim, Qwen3/OLMo2 style)
    qk_norm_scope: Literal["head", "projection"] = "head"  # projection: one norm over all heads at once (OLMoE)
    position: Literal["rope", "learned"] = "rope"
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling = field(default_factory=RopeScaling)
    max_seq_len: int = 2048
    tie_embeddings: bool = True
    qkv_bias: bool = False  # Qwen2-style biases on the q/k/v projections
    vocab_multiple_of: int = 1  # pad the embedding rows to a multiple (64 or 128 helps GPU matmuls)
    init_std: float = 0.02
    scaled_residual_init: bool = True  # output projections get std / sqrt(2 * n_layer) (GPT-2, OLMo)
    attention_backend: Literal["sdpa", "flash", "eager"] = "sdpa"
    moe: MoEConfig | None = None  # Mixture-of-Experts FFNs; None: every layer has a dense FFN

    def __post_init__(self) -> None:
        for key in ("vocab_size", "n_layer", "d_model", "n_head", "max_seq_len", "ffn_multiple_of", "vocab_multiple_of"):
            require(getattr(self, key) > 0, key, f"must be positive, got {getattr(self, key)}")
        check_choice("ffn", self.ffn, FFN_KINDS)
        check_choice("norm", self.norm, NORM_KINDS)
        check_choice("position", self.position, POSITION_KINDS)
        check_choice("attention_backend", self.attention_backend, ATTENTION_BACKENDS)
        if self.head_dim is None:
            require(
                self.d_model % self.n_head == 0,
                "n_head",
                f"d_model={self.d_model} is not divisible by n_head={self.n_head}; valid n_head values: "
                f"{', '.join(str(h) for h in range(1, self.d_model + 1) if self.d_model % h == 0 and h <= 128)}",
            )
        else:
            require(self.head_dim > 0, "head_dim", f"must be positive, got {self.head_dim}")
        if self.n_kv_head is not None:
            require(self.n_kv_head > 0, "n_kv_head", f"must be positive, got {self.n_kv_head}")
            require(
                self.n_head % self.n_kv_head == 0,
                "n_kv_head",
                f"n_head={self.n_head} is not divisible by n_kv_head={self.n_kv_head}; valid n_kv_head values: "
                f"{', '.join(str(k) for k in range(1, self.n_head + 1) if self.n_head % k == 0)}",
            )
        if self.position == "rope":
            require(self.head_dim_ % 2 == 0, "head_dim", f"RoPE needs an even head dimension, got {self.head_dim_}")
            require(self.rope_theta > 0, "rope_theta", f"must be positive, got {self.rope_theta}")
        if self.ffn_hidden is not None:
            require(self.ffn_hidden > 0, "ffn_hidden", f"must be positive, got {self.ffn_hidden}")
        if self.ffn_mult is not None:
            require(self.ffn_mult > 0, "ffn_mult", f"must be positive, got {self.ffn_mult}")
        require(self.norm_eps > 0, "norm_eps", f"must be positive, got {self.norm_eps}")
        require(self.init_std > 0, "init_std", f"must be positive, got {self.init_std}")
        check_choice("qk_norm_scope", self.qk_norm_scope, QK_NORM_SCOPES)
        if self.moe is not None:
            require(self.moe.dense_layers < self.n_layer, "moe.dense_layers",
                    f"must be below n_layer={self.n_layer} (some layer must be MoE), got {self.moe.dense_layers}")

    # ---------------------------------------------------------------------------------------------- derived sizes
    @property
    def kv_heads(self) -> int:
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def head_dim_(self) -> int:
        return self.d_model // self.n_head if self.head_dim is None else self.head_dim

    @property
    def gated_ffn(self) -> bool:
        return self.ffn in ("swiglu", "geglu")

    @property
    def ffn_dim(self) -> int:
        if self.ffn_hidden is not None:
            return self.ffn_hidden
        mult = self.ffn_mult if self.ffn_mult is not None else (8 / 3 if self.gated_ffn else 4.0)
        return _round_up(int(mult * self.d_model), self.ffn_multiple_of)

    @property
    def padded_vocab_size(self) -> int:
        return _round_up(self.vocab_size, self.vocab_multiple_of)

    @property
    def expert_ffn_dim(self) -> int:
        """FFN width of one routed expert."""
        assert self.moe is not None
        return self.moe.expert_ffn_hidden or self.ffn_dim

    @property
    def shared_ffn_dim(self) -> int:
        """FFN width of all shared experts together (they run as one wider FFN: the same function)."""
        assert self.moe is not None
        return self.moe.shared_experts * (self.moe.shared_ffn_hidden or self.expert_ffn_dim)

    def is_moe_layer(self, layer: int) -> bool:
        return self.moe is not None and layer >= self.moe.dense_layers

    # ---------------------------------------------------------------------------------------------- accounting
    def _norm_params(self, dim: int) -> int:
        return dim if self.norm == "rmsnorm" else 2 * dim

    def _ffn_params(self, width: int) -> int:
        return (3 if self.gated_ffn else 2) * self.d_model * width

    def attention_params(self) -> int:
        d, hd, h, kv = self.d_model, self.head_dim_, self.n_head, self.kv_heads
        params = d * h * hd + 2 * d * kv * hd + h * hd * d
        if self.qkv_bias:
            params += h * hd + 2 * kv * hd
        if self.qk_norm:
            params += (self._norm_params(hd) * 2 if self.qk_norm_scope == "head"
                       else self._norm_params(h * hd) + self._norm_params(kv * hd))
        return params

    def ffn_params(self, layer: int, active: bool = False) -> int:
        """The layer's feed-forward: dense, or router + routed experts (all, or the top-k a token uses when
        ``active``) + shared experts and their gate."""
        if not self.is_moe_layer(layer):
            return self._ffn_params(self.ffn_dim)
        moe = self.moe
        routed = (moe.top_k if active else moe.experts) * self._ffn_params(self.expert_ffn_dim)
        shared = self._ffn_params(self.shared_ffn_dim) + (self.d_model if moe.shared_gate else 0)
        return moe.experts * self.d_model + routed + shared

    def layer_params(self, layer: int, active: bool = False) -> int:
        return self.attention_params() + self.ffn_params(layer, active) + 2 * self._norm_params(self.d_model)

    def embedding_params(self) -> int:
        """Token embedding, untied output head and learned positions: the vocabulary/position tables."""
        table = self.padded_vocab_size * self.d_model
        head = 0 if self.tie_embeddings else table
        positions = self.max_seq_len * self.d_model if self.position == "learned" else 0
        return table + head + positions

    def non_embedding_params(self, active: bool = False) -> int:
        """Kaplan et al.'s N: all parameters but the vocabulary and position tables (``active``: of one token)."""
        return sum(self.layer_params(i, active) for i in range(self.n_layer)) + self._norm_params(self.d_model)

    def params(self) -> int:
        """Every parameter, every expert included: what the weights occupy."""
        return self.non_embedding_params() + self.embedding_params()

    def active_params(self) -> int:
        """The parameters one token uses: a MoE layer's top-k routed experts only (equal to params() if dense)."""
        return self.non_embedding_params(active=True) + self.embedding_params()

    def matmul_params(self) -> int:
        """Weights that multiply each token's activations: the blocks' active ones plus the output head."""
        return self.non_embedding_params(active=True) + self.padded_vocab_size * self.d_model

    def attention_flops_per_token(self, context: int) -> int:
        """Forward FLOPs of QK^T and AV for one token attending to ``context`` positions, over all layers."""
        return 4 * self.n_layer * self.n_head * self.head_dim_ * context

    def train_flops_per_token(self, seq_len: int | None = None) -> int:
        """Forward + backward FLOPs per token: 6 * matmul params + 3 * attention (PaLM appendix B convention,
        counting the full T x T score matrix as the standard MFU formula does)."""
        t = self.max_seq_len if seq_len is None else seq_len
        return 6 * self.matmul_params() + 3 * self.attention_flops_per_token(t)

    def inference_flops_per_token(self, context: int) -> int:
        """Forward FLOPs to decode one token with ``context`` tokens already in the KV cache."""
        return 2 * self.matmul_params() + self.attention_flops_per_token(context)

    def kv_cache_bytes_per_token(self, bytes_per_value: float = 2.0) -> float:
        """K and V for every layer: grows linearly with context; GQA/MQA shrink it by n_head / n_kv_head."""
        return 2 * self.n_layer * self.kv_heads * self.head_dim_ * bytes_per_value

    def weight_bytes(self, precision: str = "bf16") -> float:
        """Bytes all the weights occupy: what must fit in memory."""
        check_choice("precision", precision, tuple(BYTES_PER_WEIGHT))
        return self.params() * BYTES_PER_WEIGHT[precision]

    def weight_bytes_read_per_token(self, precision: str = "bf16") -> float:
        """Weight bytes one decoded token reads (its active experts only): what bounds single-stream speed."""
        check_choice("precision", precision, tuple(BYTES_PER_WEIGHT))
        return self.active_params() * BYTES_PER_WEIGHT[precision]

    def accounting(self, seq_len: int | None = None) -> dict[str, float]:
        t = self.max_seq_len if seq_len is None else seq_len
        return {
            "params": self.params(),
            "active_params": self.active_params(),
            "non_embedding_params": self.non_embedding_params(),
            "embedding_params": self.embedding_params(),
            "train_flops_per_token": self.train_flops_per_token(t),
            "inference_flops_per_token": self.inference_flops_per_token(t),
            "seq_len": t,
            "kv_cache_bytes_per_token": self.kv_cache_bytes_per_token(),
            "weight_bytes_bf16": self.weight_bytes("bf16"),
            "weight_bytes_int8": self.weight_bytes("int8"),
            "weight_bytes_int4": self.weight_bytes("int4"),
            "weight_bytes_read_per_token_bf16": self.weight_bytes_read_per_token("bf16"),
        }


def _round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)
