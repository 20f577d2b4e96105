"""The training step: slmtrain as launch/train.py runs it (Lightning Trainer, callbacks and logging at their defaults,
fused head + loss, fused AdamW) against a plain PyTorch loop over transformers' LlamaForCausalLM with the same
weights, batches, precision and optimizer (AdamW, the usual ``model(input_ids, labels=input_ids).loss``).

    python bench/train_step.py [vocabs=[8192,128256] rounds=2 steps=12 warmup=3 threads=1 d_model=256 n_layer=4
                                seq_len=256 micro_batch=4 compile=false]

Every measurement runs in a fresh subprocess with ``threads`` threads, the sides alternating round after round so that
machine noise hits them alike. tokens/s: the median over the steps after ``warmup`` of the wall time between
consecutive optimizer steps (data loading and everything else in the loop included). Peak memory: the process's
resident-set high-water mark (VmHWM, /proc/self/status), reset through /proc/self/clear_refs just before the first step,
so that it is the peak while training (weights, gradients, optimizer state, activations, logits); "growth" subtracts
the resident set at that moment (interpreter, libraries, weights). ``compile=true`` also times slmtrain with
``compile=true`` (minutes of compilation per process on 2 cores). Both sides train on the same shards of Python's
documentation (a 4k tokenizer), so the ids are real text; the vocabulary sets the head's size. Linux only.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

sys.path[0] = str(Path(__file__).resolve().parent.parent)

import pydoc_data.topics  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402

from slmtrain.config import build, split_args  # noqa: E402
from slmtrain.data.shards import prepare_shards  # noqa: E402
from slmtrain.train.config import TrainConfig, load_recipe  # noqa: E402

SIDES = ("slmtrain", "slmtrain-compiled", "transformers")


@dataclass
class Args:
    vocabs: list[int] = field(default_factory=lambda: [8192, 128256])  # model vocabularies (8k; Llama-3's 128k)
    rounds: int = 2  # alternations of the sides; each round starts fresh processes
    steps: int = 12  # optimizer steps per process, the first `warmup` of them untimed
    warmup: int = 3
    threads: int = 1  # torch threads of each measured process
    d_model: int = 256
    n_layer: int = 4
    seq_len: int = 256
    micro_batch: int = 4  # sequences per step (no accumulation)
    compile: bool = False  # also measure slmtrain with compile=true
    shards: str = ""  # token shards to train on; empty: built from Python's documentation in a temporary folder


class StepProbe(Callback):
    """Step-end times, the first loss and the resident-set peak from the first step on; a Lightning callback for the
    slmtrain side, called by hand in the plain loop."""

    def __init__(self) -> None:
        self.step_ends: list[float] = []
        self.first_loss = float("nan")
        self.rss_at_start_kib = 0

    def start(self) -> None:
        Path("/proc/self/clear_refs").write_text("5")  # the high-water mark restarts from the current resident set
        self.rss_at_start_kib = proc_status_kib("VmRSS")
        self.step_ends = [time.perf_counter()]

    def step_done(self, loss: torch.Tensor) -> None:
        if len(self.step_ends) == 1:
            self.first_loss = float(loss.detach())
        self.step_ends.append(time.perf_counter())

    def on_train_start(self, trainer, pl_module) -> None:
        self.start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.step_done(outputs["loss"])

    def result(self, warmup: int, tokens_per_step: int) -> dict[str, Any]:
        seconds = [b - a for a, b in zip(self.step_ends, self.step_ends[1:])][warmup:]
        peak = proc_status_kib("VmHWM")
        return {"tokens_per_s": tokens_per_step / statistics.median(seconds), "first_loss": self.first_loss,
                "peak_mib": peak / 1024, "growth_mib": (peak - self.rss_at_start_kib) / 1024}


def proc_status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} missing from /proc/self/status")


def recipe(args: Args, vocab: int, compiled: bool) -> TrainConfig:
    """launch/train.py's demo recipe at the bench's size: only what is not the training step is switched off
    (validation, checkpoints, export, samples, the progress bar)."""
    tokens = args.micro_batch * args.seq_len
    return load_recipe("demo", {
        "run_dir": tempfile.mkdtemp(prefix="train_step_run_"),
        "model": {"preset": "demo-2m", "vocab_size": vocab, "d_model": args.d_model, "n_layer": args.n_layer,
                  "n_head": args.d_model // 64, "n_kv_head": max(1, args.d_model // 128), "ffn_hidden": None,
                  "max_seq_len": args.seq_len, "tie_embeddings": True},
        "data": {"shards": args.shards, "build": "none", "seq_len": args.seq_len, "val_samples": 0},
        "batch": {"tokens": tokens, "micro_batch": args.micro_batch},
        "budget": {"policy": "fixed", "tokens": args.steps * tokens},
        "trainer": {"enable_progress_bar": False, "enable_model_summary": False},
        "val_every_n_steps": 10**6, "ckpt_every_n_steps": 10**6, "export_hf": False, "samples": 0,
        "compile": compiled,
    })


def measure_slmtrain(config: TrainConfig, args: Args) -> StepProbe:
    from slmtrain.train.run import train

    probe = StepProbe()
    train(config, callbacks=[probe])
    return probe


def measure_transformers(config: TrainConfig, args: Args) -> StepProbe:
    """The plain loop: LlamaForCausalLM holding the weights slmtrain starts from (same seed, copied tensor by
    tensor), the same batches from the same data module, bf16 autocast when slmtrain uses it, AdamW, clipping."""
    import transformers

    from slmtrain.model.formats.hf import hf_config, to_hf_state_dict
    from slmtrain.model.transformer import Transformer
    from slmtrain.train.data import ShardsDataModule
    from slmtrain.train.run import resolve_precision

    model_config = config.model_config
    torch.manual_seed(config.seed)  # as train() seeds right before building its model
    weights = to_hf_state_dict(Transformer(model_config))
    model = transformers.LlamaForCausalLM(hf_config(model_config)).train()
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:  # a tied head is the embedding, loaded through it
        raise RuntimeError(f"weight copy failed: missing {missing}, unexpected {unexpected}")
    opt = config.optim
    optimizer = torch.optim.AdamW(model.parameters(), lr=opt.lr, betas=(opt.beta1, opt.beta2), eps=opt.eps,
                                  weight_decay=opt.weight_decay)
    data = ShardsDataModule(config.data, config.batch.micro_batch, 1, config.seed)
    data.setup("fit")
    bf16 = resolve_precision(config.precision, "cpu").startswith("bf16")
    probe = StepProbe()
    probe.start()
    for batch in islice(data.train_dataloader(), args.steps):
        ids = batch[:, :-1].long()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), opt.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        probe.step_done(loss.detach())
    return probe


def run_side(side: str, vocab: int, args: Args) -> dict[str, Any]:
    """One measurement in a fresh process (its memory peak is its own)."""
    argv = [sys.executable, __file__, "measure", side, f"vocab={vocab}",
            *(f"{key}={value}" for key, value in vars(args).items() if key != "vocabs")]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{side} at vocab {vocab} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(side: str, overrides: dict[str, Any]) -> None:
    vocab = overrides.pop("vocab")
    args = build(Args, overrides)
    torch.set_num_threads(args.threads)
    config = recipe(args, vocab, compiled=side == "slmtrain-compiled")
    probe = (measure_transformers if side == "transformers" else measure_slmtrain)(config, args)
    print(json.dumps(probe.result(args.warmup, config.batch.tokens)))


def build_shards(root: Path) -> Path:
    (root / "raw").mkdir(parents=True)
    with (root / "raw" / "docs.jsonl").open("w") as f:
        for i, text in enumerate(pydoc_data.topics.topics.values()):
            f.write(json.dumps({"id": str(i), "text": text}) + "\n")
    (root / "tok.yaml").write_text("kind: bpe\nvocab_size: 4096\nbyte_fallback: true\nsplit_digits: true\n")
    prepare_shards(root / "tok.yaml", root / "raw", root / "shards", tokenizer_dir=root / "tok", val_fraction=0.02)
    return root / "shards"


def main(argv: list[str]) -> None:
    words, overrides = split_args(argv, positional=2)
    if words[:1] == ["measure"]:
        return measure(words[1], overrides)
    args = build(Args, overrides)
    sides = [side for side in SIDES if args.compile or side != "slmtrain-compiled"]
    with tempfile.TemporaryDirectory() as tmp:
        args.shards = args.shards or str(build_shards(Path(tmp)))
        print(f"model: d_model {args.d_model}, {args.n_layer} layers, tied head; batch {args.micro_batch} x "
              f"{args.seq_len} tokens; {args.threads} thread(s); torch {torch.__version__}", flush=True)
        rows = []
        for vocab in args.vocabs:
            results: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
            for round_index in range(args.rounds):
                for side in sides:
                    results[side].append(run_side(side, vocab, args))
                    r = results[side][-1]
                    print(f"vocab {vocab} round {round_index} {side:<18} {r['tokens_per_s']:>8,.0f} tok/s  peak "
                          f"{r['peak_mib']:>6,.0f} MiB (+{r['growth_mib']:,.0f})  first loss {r['first_loss']:.4f}",
                          flush=True)
            rows.append((vocab, {side: summarise(runs) for side, runs in results.items()}))
    print_table(rows, sides)


def summarise(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Median tokens/s over the rounds; the largest peak (memory does not depend on load)."""
    return {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in runs),
            "peak_mib": max(r["peak_mib"] for r in runs), "growth_mib": max(r["growth_mib"] for r in runs)}


def print_table(rows: list[tuple[int, dict[str, dict[str, float]]]], sides: list[str]) -> None:
    print("\n| vocab | side | tokens/s | x transformers | peak RSS MiB | x transformers | growth MiB | x transformers |")
    print("|---|---|---|---|---|---|---|---|")
    for vocab, by_side in rows:
        reference = by_side["transformers"]
        for side in sides:
            s = by_side[side]
            print(f"| {vocab:,} | {side} | {s['tokens_per_s']:,.0f} | {s['tokens_per_s'] / reference['tokens_per_s']:.2f} "
                  f"| {s['peak_mib']:,.0f} | {s['peak_mib'] / reference['peak_mib']:.2f} | {s['growth_mib']:,.0f} "
                  f"| {s['growth_mib'] / reference['growth_mib']:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
