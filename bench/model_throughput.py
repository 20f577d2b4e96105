"""Training-step throughput of the slmtrain model against transformers' LlamaForCausalLM on the same config.

    python bench/model_throughput.py [modes=fp32,bf16,fp32-compile,bf16-compile steps=5 batch=4 seq=256
                                      d_model=256 n_layer=4 vocab=4096]

One step is forward, cross-entropy, backward and AdamW. Both models start from the same weights (copied through
slmtrain.model.formats.hf), so their step-0 losses agree; steps of the two are timed alternately so that machine noise
hits both alike. Prints tokens/s of both, the ratio (slmtrain / transformers, > 1 is faster) and both losses.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402

from slmtrain.config import build, check_choice, split_args  # noqa: E402
from slmtrain.model.config import ModelConfig  # noqa: E402
from slmtrain.model.formats.hf import hf_config, to_hf_state_dict  # noqa: E402
from slmtrain.model.transformer import Transformer  # noqa: E402

MODES = ("fp32", "bf16", "fp32-compile", "bf16-compile")


@dataclass
class Args:
    modes: list[str] = field(default_factory=lambda: list(MODES))
    steps: int = 5  # timed steps per model and mode, after the warm-up steps
    warmup: int = 2  # untimed steps per model and mode (with torch.compile, the first one compiles)
    batch: int = 4
    seq: int = 256
    d_model: int = 256
    n_layer: int = 4
    vocab: int = 4096

    def __post_init__(self) -> None:
        for mode in self.modes:
            check_choice("modes", mode, MODES)


@dataclass
class Runner:
    """One model being trained: its step function, losses and step times."""

    name: str
    forward: Callable[[torch.Tensor], torch.Tensor]
    optimizer: torch.optim.Optimizer
    autocast: bool
    losses: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def step(self, ids: torch.Tensor, targets: torch.Tensor, timed: bool) -> None:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            logits = self.forward(ids)
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.losses.append(loss.item())  # .item() waits for the step to finish
        if timed:
            self.seconds.append(time.perf_counter() - start)


def build_pair(config: ModelConfig) -> tuple[Transformer, transformers.LlamaForCausalLM]:
    torch.manual_seed(0)
    ours = Transformer(config).train()
    theirs = transformers.LlamaForCausalLM(hf_config(config)).train()
    missing, unexpected = theirs.load_state_dict(to_hf_state_dict(ours), strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:  # a tied head is the embedding, loaded through it
        raise RuntimeError(f"weight copy failed: missing {missing}, unexpected {unexpected}")
    return ours, theirs


def run_mode(mode: str, config: ModelConfig, args: Args) -> tuple[Runner, Runner]:
    ours, theirs = build_pair(config)
    compile_ = mode.endswith("compile")
    ours_forward = torch.compile(ours) if compile_ else ours
    theirs_forward = torch.compile(theirs) if compile_ else theirs
    autocast = mode.startswith("bf16")
    runners = (
        Runner("slmtrain", ours_forward, torch.optim.AdamW(ours.parameters(), lr=1e-3), autocast),
        # use_cache=False: what a training loop passes (no DynamicCache is built).
        Runner("transformers", lambda ids: theirs_forward(input_ids=ids, use_cache=False).logits,
               torch.optim.AdamW(theirs.parameters(), lr=1e-3), autocast),
    )
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, config.vocab_size, (args.batch, args.seq + 1), generator=generator)
    ids, targets = tokens[:, :-1], tokens[:, 1:]
    for step in range(args.warmup + args.steps):
        for runner in runners:  # alternate: step i of both models runs back to back
            runner.step(ids, targets, timed=step >= args.warmup)
    return runners


def main(argv: list[str]) -> None:
    _, overrides = split_args(argv)
    args = build(Args, overrides)
    config = ModelConfig(vocab_size=args.vocab, n_layer=args.n_layer, d_model=args.d_model, n_head=args.d_model // 64,
                         n_kv_head=max(1, args.d_model // 128), max_seq_len=args.seq, tie_embeddings=True)
    print(f"config: {config.n_layer} layers, d_model {config.d_model}, {config.n_head} heads ({config.kv_heads} KV), "
          f"ffn {config.ffn_dim}, vocab {config.vocab_size}, {config.params():,} params; batch {args.batch} x seq "
          f"{args.seq}; torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{torch.get_num_threads()} threads")
    header = (f"{'mode':<14} {'slmtrain tok/s':>15} {'transformers tok/s':>19} {'ratio':>6} "
              f"{'loss@0 slm/hf':>17} {'loss@end slm/hf':>17}")
    print(header)
    tokens = args.batch * args.seq
    for mode in args.modes:
        ours, theirs = run_mode(mode, config, args)
        ours_tps = tokens / median(ours.seconds)
        theirs_tps = tokens / median(theirs.seconds)
        print(f"{mode:<14} {ours_tps:>15,.0f} {theirs_tps:>19,.0f} {ours_tps / theirs_tps:>6.2f} "
              f"{ours.losses[0]:>8.4f}/{theirs.losses[0]:<8.4f} {ours.losses[-1]:>8.4f}/{theirs.losses[-1]:<8.4f}")


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


if __name__ == "__main__":
    main(sys.argv[1:])
