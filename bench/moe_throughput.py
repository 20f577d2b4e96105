"""Training-step throughput of slmtrain's Mixture-of-Experts against transformers' MixtralForCausalLM on the same
config and weights, and against a dense slmtrain model of equal active parameters.

    python bench/moe_throughput.py [modes=fp32,bf16 steps=5 warmup=2 batch=4 seq=256 d_model=256 n_layer=4
                                    experts=8 top_k=2 expert_ffn=256 vocab=4096 threads=2]

One step is forward, cross-entropy (+ the balancing loss for slmtrain, as training adds it), backward and AdamW.
Mixtral is loaded from slmtrain's HF export of the same weights (so both start at the same loss), twice: with
transformers' default experts implementation (``grouped_mm``, or its fallback where the kernel is missing) and with
its ``eager`` per-expert loop. The dense model has FFN width top_k x expert_ffn: the same active parameters (less
the router). Steps of all four are timed alternately so that machine noise hits them alike. Prints tokens/s and the
ratios slmtrain MoE / each reference (> 1: slmtrain MoE is faster), for the whole step and for the first layer's
MoE block alone (forward and backward of the same hidden states through the same weights).
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median

import torch
import torch.nn.functional as F
import transformers

from slmtrain.config import build, check_choice, split_args
from slmtrain.model.config import ModelConfig, MoEConfig
from slmtrain.model.formats.hf import export_hf
from slmtrain.model.transformer import Transformer

MODES = ("fp32", "bf16")


@dataclass
class Runner:
    """One model being trained: its step function, losses and step times."""

    name: str
    forward: Callable[[torch.Tensor], torch.Tensor]
    optimizer: torch.optim.Optimizer
    autocast: bool
    moe_block: torch.nn.Module  # the first layer's MoE, timed alone
    extra_loss: Callable[[], torch.Tensor | float] = lambda: 0.0  # added to the loss after the forward
    losses: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    block_seconds: list[float] = field(default_factory=list)

    def step(self, ids: torch.Tensor, targets: torch.Tensor, timed: bool) -> None:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            logits = self.forward(ids)
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        (loss + self.extra_loss()).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.losses.append(loss.item())  # .item() waits for the step to finish
        if timed:
            self.seconds.append(time.perf_counter() - start)

    def block_step(self, hidden: torch.Tensor, timed: bool) -> None:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            out = self.moe_block(hidden)
        out = out[0] if isinstance(out, tuple) else out
        out.float().square().mean().backward()
        if timed:
            self.block_seconds.append(time.perf_counter() - start)


@dataclass
class Args:
    modes: list[str] = field(default_factory=lambda: list(MODES))
    steps: int = 5  # timed steps per model and mode, after the warm-up steps
    warmup: int = 2  # untimed steps per model and mode
    batch: int = 4
    seq: int = 256
    d_model: int = 256
    n_layer: int = 4
    experts: int = 8
    top_k: int = 2
    expert_ffn: int = 256  # FFN width of one expert; the dense model's is top_k times it
    vocab: int = 4096
    threads: int = 2  # torch threads (intra-op)

    def __post_init__(self) -> None:
        for mode in self.modes:
            check_choice("modes", mode, MODES)


def runners(config: ModelConfig, dense: ModelConfig, autocast: bool, export_dir: Path) -> list[Runner]:
    torch.manual_seed(0)
    ours = Transformer(config).train()
    export_hf(ours, export_dir)
    mixtral = {impl: transformers.MixtralForCausalLM.from_pretrained(export_dir, experts_implementation=impl).train()
               for impl in (None, "eager")}
    default_impl = mixtral[None].config._experts_implementation
    dense_model = Transformer(dense).train()

    def hf_forward(model: transformers.MixtralForCausalLM):
        return lambda ids: model(input_ids=ids, use_cache=False).logits

    return [
        # the balancing loss joins the loss, as in training
        Runner("slmtrain MoE", ours, torch.optim.AdamW(ours.parameters(), lr=1e-3), autocast, ours.blocks[0].mlp,
               ours.moe_loss),
        Runner(f"Mixtral ({default_impl})", hf_forward(mixtral[None]),
               torch.optim.AdamW(mixtral[None].parameters(), lr=1e-3), autocast, mixtral[None].model.layers[0].mlp),
        Runner("Mixtral (eager)", hf_forward(mixtral["eager"]),
               torch.optim.AdamW(mixtral["eager"].parameters(), lr=1e-3), autocast,
               mixtral["eager"].model.layers[0].mlp),
        Runner("slmtrain dense", dense_model, torch.optim.AdamW(dense_model.parameters(), lr=1e-3), autocast,
               dense_model.blocks[0].mlp),
    ]


def main(argv: list[str]) -> None:
    _, overrides = split_args(argv)
    args = build(Args, overrides)
    torch.set_num_threads(args.threads)
    shape = dict(vocab_size=args.vocab, n_layer=args.n_layer, d_model=args.d_model, n_head=args.d_model // 64,
                 n_kv_head=max(1, args.d_model // 128), max_seq_len=args.seq, tie_embeddings=False)
    config = ModelConfig(**shape, ffn_hidden=args.expert_ffn,
                         moe=MoEConfig(experts=args.experts, top_k=args.top_k, aux_loss_coef=0.01))
    dense = ModelConfig(**shape, ffn_hidden=args.top_k * args.expert_ffn)
    print(f"MoE: {args.n_layer} layers, d_model {args.d_model}, {args.experts} experts top-{args.top_k} of width "
          f"{args.expert_ffn}: {config.params():,} params, {config.active_params():,} active; dense: "
          f"{dense.params():,}; batch {args.batch} x seq {args.seq}; torch {torch.__version__}, transformers "
          f"{transformers.__version__}, {torch.get_num_threads()} threads")
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=generator)
    ids, targets = tokens[:, :-1], tokens[:, 1:]
    for mode in args.modes:
        with tempfile.TemporaryDirectory() as export_dir:
            group = runners(config, dense, mode == "bf16", Path(export_dir))
            for step in range(args.warmup + args.steps):
                for runner in group:  # alternate: step i of every model runs back to back
                    runner.step(ids, targets, timed=step >= args.warmup)
            hidden = torch.randn(args.batch, args.seq, args.d_model, generator=generator, requires_grad=True)
            for step in range(args.warmup + args.steps):
                for runner in group:
                    runner.block_step(hidden, timed=step >= args.warmup)
        for what, seconds in (("step", lambda r: r.seconds), ("MoE block", lambda r: r.block_seconds)):
            rates = {r.name: args.batch * args.seq / median(seconds(r)) for r in group}
            ours = rates["slmtrain MoE"]
            print(f"{mode} {what}: " + ", ".join(f"{name} {rate:,.0f} tok/s" for name, rate in rates.items()))
            print(f"{mode} {what}: slmtrain MoE / " + ", ".join(f"{name} {ours / rate:.2f}"
                                                              for name, rate in rates.items() if name != "slmtrain MoE"))
        print(f"{mode}: step-0 loss slmtrain {group[0].losses[0]:.4f}, Mixtral {group[1].losses[0]:.4f}")


if __name__ == "__main__":
    main(sys.argv[1:])
