"""One-GPU training throughput of a ~1B Llama-shaped slmtrain model: tokens/s and MFU of a full training step
(forward, backward, AdamW) at sequence 2048 in bf16, with and without torch.compile, SDPA vs flash-attn (when
importable). Run by bench/gpu_check.sh on a lent H200.

    python bench/gpu_bench.py [preset=llama3.2-1b vocab_size=32000 seq_len=2048 micro_batch=8 steps=12]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from slmtrain.config import parse_overrides  # noqa: E402
from slmtrain.model import presets  # noqa: E402
from slmtrain.model.attention import flash_available  # noqa: E402
from slmtrain.model.transformer import Transformer  # noqa: E402
from slmtrain.hardware import cuda_peak_flops  # noqa: E402
from slmtrain.train.parallel import compile_blocks  # noqa: E402


def step_time(model: Transformer, batch: torch.Tensor, steps: int) -> tuple[float, float]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    losses, times = [], []
    for _ in range(steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        losses.append(loss.item())
    steady = sorted(times[3:])
    return steady[len(steady) // 2], losses[0]


def main() -> None:
    args = parse_overrides(sys.argv[1:])
    seq_len, micro, steps = int(args.get("seq_len", 2048)), int(args.get("micro_batch", 8)), int(args.get("steps", 12))
    config = presets.get(str(args.get("preset", "llama3.2-1b")), vocab_size=int(args.get("vocab_size", 32000)),
                         max_seq_len=seq_len, rope_scaling={"kind": "none"}, vocab_multiple_of=128)
    peak, source = cuda_peak_flops(torch.cuda.get_device_name())
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | peak {peak:.3e} FLOP/s ({source})")
    print(f"model {config.params():,} params | seq {seq_len} | micro-batch {micro} | flash-attn {flash_available()}")
    batch = torch.randint(0, config.vocab_size, (micro, seq_len + 1), device="cuda")
    flops_per_token = config.train_flops_per_token(seq_len)
    print("| backend | compile | tokens/s | MFU | first loss |\n|---|---|---|---|---|")
    for backend in ("sdpa", "flash") if flash_available() else ("sdpa",):
        for compiled in (False, True):
            torch.manual_seed(0)
            model = Transformer(presets.get(str(args.get("preset", "llama3.2-1b")), vocab_size=config.vocab_size,
                                            max_seq_len=seq_len, rope_scaling={"kind": "none"}, vocab_multiple_of=128,
                                            attention_backend=backend)).cuda()
            if compiled:
                compile_blocks(model)
            seconds, loss = step_time(model, batch, steps)
            tokens_per_s = micro * seq_len / seconds
            print(f"| {backend} | {compiled} | {tokens_per_s:,.0f} | {flops_per_token * tokens_per_s / peak:.1%} | {loss:.4f} |",
                  flush=True)
            del model
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
