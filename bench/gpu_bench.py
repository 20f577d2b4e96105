"""One-device training throughput of a Llama-3.2-1B-shaped slmtrain model: tokens/s, MFU and peak memory of a full
training step (forward, loss, backward, fused AdamW) at sequence 2048 in bf16 autocast, for every combination of
attention backend (SDPA; flash-attn when importable), torch.compile (whole model, as ``compile=true`` trains) and loss
(the fused chunked head + cross-entropy, or the plain logits + F.cross_entropy). Run by bench/gpu_check.sh on a lent
GPU; ``device=cpu`` with a tiny preset is a dry run of the same code.

    python bench/gpu_bench.py [preset=llama3.2-1b vocab_size=128256 seq_len=2048 micro_batch=4 steps=10 device=cuda]
    python bench/gpu_bench.py preset=tiny vocab_size=512 seq_len=64 micro_batch=2 steps=4 device=cpu compile=false
"""

from __future__ import annotations

import itertools
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from slmtrain.config import build, parse_overrides  # noqa: E402
from slmtrain.hardware import CpuPeak, cuda_peak_flops  # noqa: E402
from slmtrain.model import presets  # noqa: E402
from slmtrain.model.attention import flash_available  # noqa: E402
from slmtrain.model.config import ModelConfig  # noqa: E402
from slmtrain.model.transformer import Transformer  # noqa: E402
from slmtrain.train.module import adamw_implementation  # noqa: E402
from slmtrain.train.parallel import compile_model  # noqa: E402

WARMUP_STEPS = 3  # untimed: the first compiles


@dataclass
class Args:
    preset: str = "llama3.2-1b"
    vocab_size: int = 128256  # Llama 3.2's
    seq_len: int = 2048
    micro_batch: int = 4
    steps: int = 10  # per configuration, the first WARMUP_STEPS untimed
    device: str = "cuda"
    compile: bool = True  # include the compiled configurations


def model_config(args: Args, backend: str) -> ModelConfig:
    return presets.get(args.preset, vocab_size=args.vocab_size, max_seq_len=args.seq_len,
                       rope_scaling={"kind": "none"}, vocab_multiple_of=128, attention_backend=backend)


def step_seconds(model: Transformer, batch: torch.Tensor, fused_loss: bool, steps: int) -> tuple[float, float]:
    """Median seconds per training step after warm-up, and the first loss."""
    device = batch.device
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, **adamw_implementation(device))
    inputs, targets = batch[:, :-1], batch[:, 1:]
    times, first_loss = [], float("nan")
    for step in range(steps):
        synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            if fused_loss:
                loss = model(inputs, targets=targets)
            else:
                logits = model(inputs)
                loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        times.append(time.perf_counter() - start)
        if step == 0:
            first_loss = float(loss.detach())
    steady = sorted(times[WARMUP_STEPS:])
    return steady[len(steady) // 2], first_loss


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str]) -> None:
    args = build(Args, parse_overrides(argv))
    device = torch.device(args.device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak, source = cuda_peak_flops(name)
    else:
        name, peak, source = "CPU", CpuPeak(torch.bfloat16).flops, "measured bf16 matmul"
    config = model_config(args, "sdpa")
    print(f"{name} | torch {torch.__version__} | peak {peak:.3e} FLOP/s ({source})")
    print(f"model {config.params():,} params, vocab {config.vocab_size} | seq {args.seq_len} | micro-batch "
          f"{args.micro_batch} | flash-attn {flash_available()}")
    batch = torch.randint(0, config.vocab_size, (args.micro_batch, args.seq_len + 1), device=device)
    flops_per_token = config.train_flops_per_token(args.seq_len)
    print("| attention | compile | loss | tokens/s | MFU | peak memory GiB | first loss |\n|---|---|---|---|---|---|---|")
    backends = ("sdpa", "flash") if flash_available() else ("sdpa",)
    for backend, compiled, fused in itertools.product(backends, (False, True) if args.compile else (False,),
                                                      (True, False)):
        torch.manual_seed(0)
        model = Transformer(model_config(args, backend)).to(device)
        if compiled:
            compile_model(model, strategy="auto")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds, loss = step_seconds(model, batch, fused, args.steps)
        memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
        tokens_per_s = args.micro_batch * args.seq_len / seconds
        print(f"| {backend} | {compiled} | {'fused' if fused else 'plain'} | {tokens_per_s:,.0f} | "
              f"{flops_per_token * tokens_per_s / peak:.1%} | {memory:.1f} | {loss:.4f} |", flush=True)
        del model
        torch._dynamo.reset()
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main(sys.argv[1:])
