"""Lightning's overhead: tokens/s of slmtrain's training run (Lightning Trainer, callbacks, logging, checkpoints off
the hot path) against a bare PyTorch loop over the same model, data order, optimizer and schedule, alternated in
the same process so that both see the same machine load.

    python bench/train_throughput.py [steps=40 rounds=2 preset=demo-2m seq_len=256 micro_batch=8]

Prints steady-state tokens/s of both (median over steps after warm-up) and the ratio.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)

import pydoc_data.topics  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from slmtrain.config import parse_overrides  # noqa: E402
from slmtrain.data.shards import open_split, prepare_shards  # noqa: E402
from slmtrain.train.callbacks import read_metrics  # noqa: E402
from slmtrain.train.config import load_recipe  # noqa: E402
from slmtrain.train.data import PackedSamples, StreamSampler  # noqa: E402
from slmtrain.train.module import LanguageModel  # noqa: E402
from slmtrain.train.run import resolve_precision, train  # noqa: E402

WARMUP_STEPS = 5


def build_shards(root: Path) -> Path:
    (root / "raw").mkdir(parents=True)
    with (root / "raw" / "docs.jsonl").open("w") as f:
        for i, text in enumerate(pydoc_data.topics.topics.values()):
            f.write(json.dumps({"id": str(i), "text": text}) + "\n")
    (root / "tok.yaml").write_text("kind: bpe\nvocab_size: 4096\nbyte_fallback: true\nsplit_digits: true\n")
    prepare_shards(root / "tok.yaml", root / "raw", root / "shards", tokenizer_dir=root / "tok", val_fraction=0.02)
    return root / "shards"


def lightning_tokens_per_s(config, run_dir: Path) -> float:
    train(config)
    rows = [r for r in read_metrics(run_dir / "metrics.csv") if r["tokens_per_s"]]
    return statistics.median(float(r["tokens_per_s"]) for r in rows[WARMUP_STEPS:])


def bare_tokens_per_s(config, steps: int) -> float:
    """The same LanguageModel (loss, optimizer groups, schedule, precision) driven by hand, no Trainer."""
    torch.manual_seed(config.seed)
    mc = config.model_config
    module = LanguageModel(config, mc, total_steps=steps, eos_id=0)
    optim = module.configure_optimizers()
    optimizer, scheduler = optim["optimizer"], optim["lr_scheduler"]["scheduler"]
    dataset = PackedSamples(open_split(config.data.shards, "train"), config.data.seq_len)
    micro = config.batch.micro_batch
    accumulate = config.batch.tokens // (micro * config.data.seq_len)
    loader = DataLoader(dataset, batch_size=micro, sampler=StreamSampler(len(dataset), config.seed, 0))
    batches = iter(loader)
    bf16 = resolve_precision(config.precision, "cpu").startswith("bf16")
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        for _ in range(accumulate):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = module.loss(next(batches)) / accumulate
            loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), config.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return config.batch.tokens / statistics.median(times[WARMUP_STEPS:])


def main() -> None:
    args = parse_overrides(sys.argv[1:])
    steps, rounds = int(args.get("steps", 40)), int(args.get("rounds", 2))
    seq_len, micro = int(args.get("seq_len", 256)), int(args.get("micro_batch", 8))
    with tempfile.TemporaryDirectory() as tmp:
        shards = build_shards(Path(tmp) / "data")
        results: dict[str, list[float]] = {"lightning": [], "bare": []}
        for round_index in range(rounds):
            run_dir = Path(tmp) / f"run{round_index}"
            config = load_recipe("demo", {
                "run_dir": str(run_dir), "model": {"preset": args.get("preset", "demo-2m"), "vocab_size": 4096},
                "data": {"shards": str(shards), "build": "none", "seq_len": seq_len, "val_samples": 0},
                "batch": {"tokens": seq_len * micro, "micro_batch": micro},
                "budget": {"policy": "fixed", "tokens": steps * seq_len * micro},
                "trainer": {"enable_progress_bar": False, "enable_model_summary": False},
                "log_every_n_steps": 1, "val_every_n_steps": 10**6, "ckpt_every_n_steps": 10**6,
                "export_hf": False, "samples": 0,
            })
            results["lightning"].append(lightning_tokens_per_s(config, run_dir))
            results["bare"].append(bare_tokens_per_s(config, steps))
            print(f"round {round_index}: lightning {results['lightning'][-1]:,.0f} tok/s, "
                  f"bare {results['bare'][-1]:,.0f} tok/s", flush=True)
    lightning, bare = statistics.median(results["lightning"]), statistics.median(results["bare"])
    print(f"\nprecision {resolve_precision('auto', 'cpu')}")
    print(f"\n| loop | tokens/s |\n|---|---|\n| bare PyTorch | {bare:,.0f} |\n| slmtrain (Lightning) | {lightning:,.0f} |")
    print(f"ratio lightning/bare = {lightning / bare:.3f}  (overhead {100 * (1 - lightning / bare):+.1f}%)")


if __name__ == "__main__":
    main()
