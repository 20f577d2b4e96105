"""Device profiles and deployment constraints: which model fits a device and decodes fast enough.

Single-stream decoding reads every weight it uses and the whole KV cache once per generated token, so its speed is
bounded by memory bandwidth: tokens/s ~= bandwidth / (weight bytes read + KV bytes at the context length). For a
Mixture-of-Experts model memory holds every expert but a token reads only its active ones. That roofline is an
upper bound (real kernels reach perhaps 50-80% of it); ``bandwidth_efficiency`` scales it.

The device profiles themselves (peaks, bandwidths, sources) live in :mod:`slmtrain.hardware`.
"""

from __future__ import annotations

from dataclasses import dataclass
from slmtrain.config import ConfigError, UserError, require
from slmtrain.hardware import GB, get_device
from slmtrain.model.config import BYTES_PER_WEIGHT, ModelConfig
from slmtrain.scaling.budget import CostModel, lifetime_optimal_tokens
from slmtrain.scaling.laws import ScalingLaw

SHAPE_FAMILIES = {"balanced": 64, "deep-thin": 24}  # d_model / n_layer: GPT-2/Kaplan-like vs MobileLLM-like
HEAD_DIM = 64


@dataclass
class Deployment:
    """Single-stream serving of one model on one device."""

    hardware: str  # a slmtrain.hardware profile name
    precision: str = "int4"  # weights
    context: int = 4096  # tokens held in the KV cache
    min_tokens_per_s: float = 20.0
    memory_fraction: float = 0.5  # of device memory the model may use (the OS and apps keep the rest)
    kv_bytes: float = 2.0  # per cached value (fp16)
    bandwidth_efficiency: float = 1.0  # fraction of peak bandwidth decode reaches; 1.0 = roofline bound

    def __post_init__(self) -> None:
        get_device(self.hardware)
        if self.precision not in BYTES_PER_WEIGHT:
            raise ConfigError("precision", f"invalid value {self.precision!r}; valid choices: "
                                           f"{', '.join(BYTES_PER_WEIGHT)}")
        require(self.context > 0, "context", f"must be positive, got {self.context}")
        require(self.min_tokens_per_s >= 0, "min_tokens_per_s", f"must be >= 0, got {self.min_tokens_per_s}")
        require(0 < self.memory_fraction <= 1, "memory_fraction", f"must be in (0, 1], got {self.memory_fraction}")
        require(self.kv_bytes > 0, "kv_bytes", f"must be positive, got {self.kv_bytes}")
        require(0 < self.bandwidth_efficiency <= 1, "bandwidth_efficiency", "must be in (0, 1]")

    @property
    def profile(self) -> DeviceProfile:
        return get_device(self.hardware)

    def kv_cache_bytes(self, model: ModelConfig) -> float:
        return model.kv_cache_bytes_per_token(self.kv_bytes) * self.context

    def memory_needed(self, model: ModelConfig) -> float:
        """Every weight (all experts) and the KV cache at the context."""
        return model.weight_bytes(self.precision) + self.kv_cache_bytes(model)

    def bytes_read_per_token(self, model: ModelConfig) -> float:
        """The weights one token uses (its active experts) and the KV cache at the context."""
        return model.weight_bytes_read_per_token(self.precision) + self.kv_cache_bytes(model)

    def decode_tokens_per_s(self, model: ModelConfig) -> float:
        return self.profile.memory_bandwidth * self.bandwidth_efficiency / self.bytes_read_per_token(model)

    def fits(self, model: ModelConfig) -> bool:
        return (self.memory_needed(model) <= self.memory_fraction * self.profile.memory_bytes
                and self.decode_tokens_per_s(model) >= self.min_tokens_per_s)


def shape_ladder(family: str = "balanced", vocab_size: int = 32000) -> list[ModelConfig]:
    """Llama-style candidates (SwiGLU, RMSNorm, RoPE, tied embeddings, GQA with 4 query heads per KV head,
    head_dim 64) at widths 256, 512, ..., 8192 with depth set by the family's aspect ratio d_model / n_layer."""
    if family not in SHAPE_FAMILIES:
        raise ConfigError("family", f"invalid value {family!r}; valid choices: {', '.join(SHAPE_FAMILIES)}")
    ladder = []
    for d_model in range(4 * HEAD_DIM, 8192 + 1, 4 * HEAD_DIM):
        n_head = d_model // HEAD_DIM
        n_kv_head = n_head // 4
        n_layer = max(2, round(d_model / SHAPE_FAMILIES[family]))
        ladder.append(ModelConfig(vocab_size=vocab_size, n_layer=n_layer, d_model=d_model, n_head=n_head,
                                  n_kv_head=n_kv_head))
    return ladder


@dataclass
class DevicePlan:
    model: ModelConfig
    params: float
    tokens: float
    loss: float
    compute_optimal_tokens: float
    train_flops: float
    inference_flops: float
    memory_bytes: float
    decode_tokens_per_s: float
    cost: float | None = None

    @property
    def tokens_per_param(self) -> float:
        return self.tokens / self.params

    @property
    def overtraining_factor(self) -> float:
        """Tokens per parameter relative to the law's compute-optimal tokens per parameter for this N."""
        return self.tokens / self.compute_optimal_tokens

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "params": self.params, "tokens": self.tokens, "tokens_per_param": self.tokens_per_param,
            "loss": self.loss, "train_flops": self.train_flops, "inference_flops": self.inference_flops,
            "lifetime_flops": self.train_flops + self.inference_flops,
            "compute_optimal_tokens_per_param": self.compute_optimal_tokens / self.params,
            "overtraining_factor": self.overtraining_factor, "memory_bytes": self.memory_bytes,
            "decode_tokens_per_s": self.decode_tokens_per_s,
            "shape": {k: getattr(self.model, k) for k in ("n_layer", "d_model", "n_head", "n_kv_head", "ffn_dim",
                                                           "vocab_size")},
        }
        if self.cost is not None:
            out["cost"] = self.cost
        return out


def plan_for_device(law: ScalingLaw, deployment: Deployment, inference_tokens: float = 0.0,
                    target_loss: float | None = None, family: str = "balanced", vocab_size: int = 32000,
                    cost: CostModel | None = None) -> DevicePlan:
    """Pick a shape from the ladder and its training tokens under the deployment constraints.

    With ``target_loss``: among feasible shapes able to reach it, the one with the least lifetime FLOPs
    6 N D(N) + 2 N T, D(N) being the tokens reaching the target. Without: the largest feasible shape (the best
    loss the device can serve), trained on its lifetime-optimal tokens for ``inference_tokens`` (Sardana).
    """
    require(inference_tokens >= 0, "inference_tokens", f"must be >= 0, got {inference_tokens}")
    ladder = shape_ladder(family, vocab_size)
    feasible = [m for m in ladder if deployment.fits(m)]
    if not feasible:
        smallest = ladder[0]
        raise ConfigError("hardware", (
            f"infeasible deployment on {deployment.hardware}: even the smallest candidate ({smallest.params():,} "
            f"params) needs {deployment.memory_needed(smallest) / GB:.3g} GB of the "
            f"{deployment.memory_fraction * deployment.profile.memory_bytes / GB:.3g} GB allowed and decodes at "
            f"{deployment.decode_tokens_per_s(smallest):.3g} tokens/s (target {deployment.min_tokens_per_s:g}); "
            "lower the precision, the context or the speed target"))
    if target_loss is None:
        model = feasible[-1]
        params = float(model.params())
        tokens = lifetime_optimal_tokens(law, params, 6.0, 2.0 * inference_tokens)
    else:
        reachable = [m for m in feasible if m.params() > law.min_params_for_loss(target_loss)]
        if not reachable:
            largest = feasible[-1].params()
            raise UserError(f"no model that fits {deployment.hardware} reaches loss {target_loss}: the largest feasible "
                            f"has {largest:,} params and a loss floor of {law.E + law.A / largest**law.alpha:.4f}")

        def lifetime(m: ModelConfig) -> float:
            n = float(m.params())
            return 6 * n * law.tokens_for_loss(n, target_loss) + 2 * n * inference_tokens

        model = min(reachable, key=lifetime)
        params = float(model.params())
        tokens = law.tokens_for_loss(params, target_loss)
    dollars = None
    if cost is not None:
        dollars = params * (6 * tokens * cost.dollars_per_flop("train") + 2 * inference_tokens * cost.dollars_per_flop("decode"))
    return DevicePlan(model, params, tokens, law.loss(params, tokens), law.compute_optimal_tokens(params),
                      6 * params * tokens, 2 * params * inference_tokens, deployment.memory_needed(model),
                      deployment.decode_tokens_per_s(model), dollars)
