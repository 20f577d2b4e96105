"""ModelConfig: every architectural knob of the decoder-only transformer, its validation, and exact accounting.

The accounting (parameters, FLOPs per token, KV-cache and weight bytes) is computed from the config alone, without
allocating weights, so the scaling calculator and the training planner can reason about 5B models on a laptop.
Tests check it against the parameter count of an instantiated model and of released checkpoints.
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

    # ---------------------------------------------------------------------------------------------- accounting
    def _norm_params(self, dim: int) -> int:
        return dim if self.norm == "rmsnorm" else 2 * dim

    def layer_params(self) -> int:
        d, hd, h, kv = self.d_model, self.head_dim_, self.n_head, self.kv_heads
        attention = d * h * hd + 2 * d * kv * hd + h * hd * d
        if self.qkv_bias:
            attention += h * hd + 2 * kv * hd
        if self.qk_norm:
            attention += 2 * self._norm_params(hd)
        mlp = (3 if self.gated_ffn else 2) * d * self.ffn_dim
        return attention + mlp + 2 * self._norm_params(d)

    def embedding_params(self) -> int:
        """Token embedding, untied output head and learned positions: the vocabulary/position tables."""
        table = self.padded_vocab_size * self.d_model
        head = 0 if self.tie_embeddings else table
        positions = self.max_seq_len * self.d_model if self.position == "learned" else 0
        return table + head + positions

    def non_embedding_params(self) -> int:
        """Kaplan et al.'s N: all parameters but the vocabulary and position tables."""
        return self.n_layer * self.layer_params() + self._norm_params(self.d_model)

    def params(self) -> int:
        return self.non_embedding_params() + self.embedding_params()

    def matmul_params(self) -> int:
        """Weights that multiply activations per token: the blocks plus the output head (tied or not)."""
        return self.non_embedding_params() + self.padded_vocab_size * self.d_model

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
        check_choice("precision", precision, tuple(BYTES_PER_WEIGHT))
        return self.params() * BYTES_PER_WEIGHT[precision]

    def accounting(self, seq_len: int | None = None) -> dict[str, float]:
        t = self.max_seq_len if seq_len is None else seq_len
        return {
            "params": self.params(),
            "non_embedding_params": self.non_embedding_params(),
            "embedding_params": self.embedding_params(),
            "train_flops_per_token": self.train_flops_per_token(t),
            "inference_flops_per_token": self.inference_flops_per_token(t),
            "seq_len": t,
            "kv_cache_bytes_per_token": self.kv_cache_bytes_per_token(),
            "weight_bytes_bf16": self.weight_bytes("bf16"),
            "weight_bytes_int8": self.weight_bytes("int8"),
            "weight_bytes_int4": self.weight_bytes("int4"),
        }


def _round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)
