"""Which fine-tuning method fits a device: predicted peak memory and step time of every method, before training,
and the measured peak memory to check the prediction against.

Peak memory is the working set a fine-tuning step adds to the runtime (the runtime's own resident memory, ~0.3 GB
for CPU PyTorch, is not counted; neither side of a comparison counts it), all in fp32 unless said otherwise:

- weights at their precision: fp32, or for ``qlora`` the blocks' linear weights in NF4 (4 bits, plus one int8 scale
  per 64 weights and one fp32 factor per 256 scales) and the rest fp32;
- for ``qlora`` at least the full-precision model it is quantised from (it is loaded before quantisation) plus
  the quantisation's temporaries for the largest layer;
- gradients and AdamW's two moments for the trainable parameters (none for the zeroth-order methods);
- adapter state: the LoRA matrices (and DoRA's magnitudes), counted with the trainable parameters;
- activations at ``seq_len`` x ``micro_batch`` = N tokens. Backpropagation keeps, per layer and token, the block
  input and norm output twice (4 d), the fused q/k/v output (kept alive by v), the rotated q and k, the attention
  output and its head-merged copy, the fused gate/up output, silu(gate) and the product (4 ffn); and at the head
  the log-softmax output, its gradient and the logits' gradient (3 N vocab). A forward without autograd (inference
  and MeZO) holds at most the logits and their log-softmax (2 N vocab), or, while the output layer runs under a
  MeZO perturbation, its perturbed weight copy and the logits. Adapters add their dropout's inputs and masks, and
  DoRA each targeted layer's base and adapter outputs plus one ``W + BA`` at a time (as QLoRA one dequantised
  weight).

Step time is a roofline estimate on the device profile: FLOPs at ``efficiency`` of the fp32 peak, or the weight
and optimizer traffic at the memory bandwidth, whichever is slower. Full fine-tuning costs 6 FLOPs per matmul
weight and token, frozen-base methods 4 (no weight gradients), MeZO 2 per forward pass, twice per perturbation,
plus three passes of Gaussian draws over the trainable parameters.

The recommended method is the first that fits in PREFERENCE: first-order before zeroth-order (MeZO needs many
more steps for the same loss), adapters before full fine-tuning (as good on small personal data sets, far less
memory, and nothing of the base overwritten), a full-precision base before a 4-bit one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from slmtrain.adapt.methods import ADAPTER_METHODS, NF4_BLOCK, LoraOptions, block_linear_shapes, check_rank
from slmtrain.config import UserError
from slmtrain.hardware import DeviceProfile
from slmtrain.model.config import ModelConfig

FP32 = 4
PREFERENCE = ("lora", "dora", "full", "qlora", "mezo_lora", "mezo")
RANDN_FLOPS = 20  # FLOPs per Gaussian draw (Philox + Box-Muller), for MeZO's regenerated perturbations
NF4_QUANTIZE_BYTES_PER_WEIGHT = 32 * FP32  # torchao's to_nf4 compares each weight with the 16 levels, in fp32, twice
NF4_BYTES_PER_WEIGHT = 0.5 + 1 / NF4_BLOCK + FP32 / (NF4_BLOCK * 256)


@dataclass
class MethodPlan:
    peak_bytes: float
    step_seconds: float
    fits: bool
    parts: dict[str, float]  # the peak's terms: weights, gradients, optimizer, activations

    def as_dict(self) -> dict[str, Any]:
        return {"peak_bytes": self.peak_bytes, "step_seconds": self.step_seconds, "fits": self.fits, **self.parts}


def adapter_params(config: ModelConfig, lora: LoraOptions, dora: bool) -> int:
    shapes = block_linear_shapes(config)
    per_layer = sum(lora.rank * (i + o) + (o if dora else 0) for name, (i, o) in shapes.items()
                    if name in lora.target_modules)
    return config.n_layer * per_layer


def backprop_activation_bytes(config: ModelConfig, tokens: int) -> float:
    """Saved tensors of a training forward pass plus the head's gradients at the start of backward."""
    q, kv = config.n_head * config.head_dim_, config.kv_heads * config.head_dim_
    per_token_layer = 4 * config.d_model + (q + 2 * kv) + (q + kv) + 2 * q + 4 * config.ffn_dim
    head = 3 * config.vocab_size + 2 * config.d_model
    return FP32 * tokens * (config.n_layer * per_token_layer + head)


def adapter_activation_bytes(config: ModelConfig, tokens: int, lora: LoraOptions, dora: bool) -> float:
    """What adapters save beyond the base's activations: with dropout, each targeted layer's dropped-out input and
    its mask; with DoRA, each targeted layer's base output and adapter output (both scaled by the magnitudes)."""
    targeted = [shape for name, shape in block_linear_shapes(config).items() if name in lora.target_modules]
    per_token = (FP32 + 1) * sum(i for i, _ in targeted) if lora.dropout > 0 else 0
    per_token += 2 * FP32 * sum(o for _, o in targeted) if dora else 0
    return tokens * config.n_layer * per_token


def no_grad_activation_bytes(config: ModelConfig, tokens: int, perturbed_head: bool) -> float:
    hidden = 3 * tokens * config.d_model
    head = max(2 * tokens * config.vocab_size,
               tokens * config.vocab_size + (config.padded_vocab_size * config.d_model if perturbed_head else 0))
    return FP32 * (hidden + head)


def predict(config: ModelConfig, method: str, seq_len: int, micro_batch: int, lora: LoraOptions,
            profile: DeviceProfile, efficiency: float = 0.5, mezo_samples: int = 1) -> MethodPlan:
    if method in ADAPTER_METHODS:
        check_rank(config, lora)
    params, tokens = config.params(), seq_len * micro_batch
    linear_weights = config.n_layer * sum(i * o for i, o in block_linear_shapes(config).values())
    weights = FP32 * params
    if method == "qlora":
        weights = FP32 * (params - linear_weights) + NF4_BYTES_PER_WEIGHT * linear_weights
    trainable = params if method in ("full", "mezo") else adapter_params(config, lora, method == "dora")
    first_order = not method.startswith("mezo")
    gradients = FP32 * trainable if first_order else 0.0
    optimizer = 2 * FP32 * trainable if first_order else 0.0
    if first_order:
        activations = backprop_activation_bytes(config, tokens)
        activations += adapter_activation_bytes(config, tokens, lora, dora=method == "dora")
        if method in ("qlora", "dora"):  # one layer's weight dequantised (qlora) or W + BA formed (dora) at a time
            activations += FP32 * max(i * o for i, o in block_linear_shapes(config).values())
    else:
        activations = no_grad_activation_bytes(config, tokens, perturbed_head=method == "mezo")
    # QLoRA quantises a model loaded in full precision: until then it holds the fp32 weights, and each layer's
    # quantisation the temporaries of torchao's nearest-level search.
    loading = FP32 * params + NF4_QUANTIZE_BYTES_PER_WEIGHT * max(i * o for i, o in block_linear_shapes(config).values())
    parts = {"weight_bytes": weights, "gradient_bytes": gradients, "optimizer_bytes": optimizer,
             "activation_bytes": activations, "loading_bytes": loading if method == "qlora" else 0.0,
             "trainable_params": trainable}
    peak = max(weights + gradients + optimizer + activations, parts["loading_bytes"])

    matmul, attention = config.matmul_params(), config.attention_flops_per_token(seq_len)
    if method == "full":
        flops, traffic = tokens * (6 * matmul + 3 * attention), 3 * weights + 7 * FP32 * params
    elif first_order:
        flops, traffic = tokens * (4 * matmul + 3 * attention) + 6 * tokens * trainable, 2 * weights
    else:
        passes = 2 * mezo_samples
        flops = passes * tokens * (2 * matmul + attention) + 3 * mezo_samples * RANDN_FLOPS * trainable
        traffic = passes * weights + 3 * mezo_samples * 2 * FP32 * trainable
    step_seconds = max(flops / (profile.flops("fp32") * efficiency), traffic / profile.memory_bandwidth)
    return MethodPlan(peak, step_seconds, peak <= profile.memory_bytes, parts)


def plan_methods(config: ModelConfig, methods: list[str], seq_len: int, micro_batch: int, lora: LoraOptions,
                 profile: DeviceProfile, mezo_samples: int = 1) -> dict[str, Any]:
    plans = {m: predict(config, m, seq_len, micro_batch, lora, profile, mezo_samples=mezo_samples) for m in methods}
    fitting = [m for m in PREFERENCE if m in plans and plans[m].fits]
    return {"methods": {m: p.as_dict() for m, p in plans.items()}, "recommended": fitting[0] if fitting else None,
            "device_profile": profile.name, "device_memory_bytes": profile.memory_bytes, "seq_len": seq_len,
            "micro_batch": micro_batch}


def format_plan(plan: dict[str, Any]) -> str:
    from slmtrain.eval.report import format_table

    rows = [{"method": m, "peak_MB": p["peak_bytes"] / 1e6, "weights_MB": p["weight_bytes"] / 1e6,
             "grads+optim_MB": (p["gradient_bytes"] + p["optimizer_bytes"]) / 1e6,
             "activations_MB": p["activation_bytes"] / 1e6, "step_s": p["step_seconds"], "fits": p["fits"]}
            for m, p in plan["methods"].items()]
    return (format_table(rows) + f"\n{plan['device_profile']}: {plan['device_memory_bytes'] / 1e9:.1f} GB, "
            f"seq_len {plan['seq_len']} x micro_batch {plan['micro_batch']}; recommended: {plan['recommended']}")


# ---------------------------------------------------------------------------------------------------- measured
def measure_peak_bytes(config: ModelConfig, method: str, seq_len: int, micro_batch: int, lora: LoraOptions,
                       steps: int = 2, threads: int = 1) -> dict[str, float]:
    """Peak resident memory a fine-tuning step adds, measured in a fresh process: everything is imported first,
    the kernel's high-water mark is reset (``/proc/self/clear_refs``), then the model is built, prepared for the
    method and trained ``steps`` steps on random tokens; the result is the high-water mark minus the resident
    memory before the model existed. A one-layer model runs the same steps first, so that the libraries the
    method imports and the code pages of its kernels are resident before the baseline. ``method="inference"`` measures forward passes with the loss, no autograd."""
    request = {"config": asdict(config), "method": method, "seq_len": seq_len, "micro_batch": micro_batch,
               "lora": asdict(lora), "steps": steps, "threads": threads}
    # A fixed mmap threshold makes glibc return every freed tensor to the system at once, so the high-water mark
    # is that of the live tensors rather than of what the allocator chose to keep.
    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run([sys.executable, "-m", "slmtrain.adapt.planner", json.dumps(request)],
                          capture_output=True, text=True, timeout=600, env=environment)
    if done.returncode != 0:
        raise UserError(f"peak-memory measurement of {method} failed: {done.stderr.strip().splitlines()[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def status_bytes(field: str) -> int:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM), in bytes."""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise UserError(f"/proc/self/status has no {field}")


def _measure(request: dict[str, Any]) -> dict[str, float]:
    import dataclasses
    import time

    import torch

    from slmtrain.adapt.data import Batch
    from slmtrain.adapt.mezo import MezoOptions, ZerothOrder
    from slmtrain.adapt.run import batch_loss, prepare
    from slmtrain.config import build
    from slmtrain.model.transformer import Transformer

    torch.set_num_threads(request["threads"])
    config = build(ModelConfig, request["config"])
    method, shape = request["method"], (request["micro_batch"], request["seq_len"])
    tokens = torch.randint(0, config.vocab_size, (shape[0], shape[1] + 1), generator=torch.Generator().manual_seed(0))
    batch = Batch(tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous(), shape[0] * shape[1])

    def train(model_config: ModelConfig) -> float:
        """Seconds per step of ``steps`` steps of the method on a fresh model."""
        model = Transformer(model_config)
        if method != "inference":
            model = prepare(model, method, build(LoraOptions, request["lora"])).train()
        if method.startswith("mezo"):
            optimizer = ZerothOrder(model, MezoOptions(), 1e-6, seed=0)
        elif method != "inference":
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        started = time.perf_counter()
        for _ in range(request["steps"]):
            if method == "inference":
                with torch.no_grad():
                    batch_loss(model, batch)
            elif method.startswith("mezo"):
                optimizer.step(lambda: batch_loss(model, batch))
            else:
                optimizer.zero_grad(set_to_none=True)
                batch_loss(model, batch).backward()
                optimizer.step()
        return (time.perf_counter() - started) / request["steps"]

    # The libraries' imports and the kernels' code pages are runtime, not working set: load them first.
    train(dataclasses.replace(config, n_layer=1))
    return peak_above_baseline(lambda: train(config))


def peak_above_baseline(work: Callable[[], float]) -> dict[str, float]:
    """Run ``work`` (returning seconds per step) with the kernel's high-water mark reset first; the peak resident
    memory it added above the resident memory before it."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set size (VmHWM) to the current one
    baseline = status_bytes("VmRSS")
    seconds = work()
    return {"peak_bytes": status_bytes("VmHWM") - baseline, "step_seconds": seconds}


if __name__ == "__main__":
    print(json.dumps(_measure(json.loads(sys.argv[1]))))
