"""A deployment-fair leaderboard: every model at every precision, its capability and its cost on the same artifact.

Fair by construction:

- the weights that are timed are the ones that are scored: each (model, precision) is loaded, quantised
  (:mod:`slmtrain.eval.quantize`), timed (:func:`slmtrain.eval.runtime.bench_device`) and then scored, one object,
  in one fresh process forked from a server holding torch, so that its peak memory is its own;
- text quality is bits per byte (tokenizers differ, so per-token loss does not compare models), every model gets
  the same context budget (perplexity windows, and the bench's prompt + generated tokens), the same task files,
  prompt templates and shots;
- every score carries a 95% bootstrap interval (``scipy.stats.bootstrap``, percentile, over documents or items).

Models are slmtrain runs, HF directories or presets; a preset has random weights, so only its cost is measured and
its capability is marked n/a. Energy per decoded token is RAPL's where readable, else an estimate, labelled.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from slmtrain.config import ConfigError, UserError, require
from slmtrain.eval.deploy_tasks import DEPLOY_DIR
from slmtrain.fresh_process import in_fresh_processes
from slmtrain.hardware import DeviceProfile, get_profile, profile_names
from slmtrain.scaling.codesign import pareto_flags

HELD_OUT_TEXT = DEPLOY_DIR.parent / "text" / "held-out-mini.jsonl"
DEFAULT_TASKS = ("hellaswag", "arc_easy", "arc_challenge", "piqa", "winogrande",
                 *sorted(p.stem for p in DEPLOY_DIR.glob("*.jsonl")))
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
PRELOAD = ("torchao.quantization", "slmtrain.eval.runtime", "slmtrain.eval.quantize")  # what every entry imports


@dataclass
class LeaderboardOptions:
    models: list[str]  # slmtrain runs, HF directories or presets (random weights: cost only)
    out: Path  # folder for leaderboard.csv, leaderboard.md and the Pareto plots
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))  # task names or JSONL paths
    text: list[Path] = field(default_factory=lambda: [HELD_OUT_TEXT])  # held-out documents for bits per byte
    quant: list[Literal["none", "int8", "int8-dynamic", "int4"]] = field(default_factory=lambda: ["none", "int8"])
    hardware: str = "host"  # roofline prediction: host (measured here) or a slmtrain.hardware profile
    dtype: Literal["fp32", "bf16"] = "bf16"  # compute dtype of every model (quantised weights dequantise to it)
    shots: int = 0  # few-shot examples per task item, the same for every model
    limit: int | None = 500  # the first N items of each task (None: all)
    max_new_tokens: int = 64  # generated tokens per item of the generation tasks, at most
    context: int = 512  # context budget of every model: perplexity window, bench prompt + gen
    prompt: int = 128  # bench prefill / TTFT prompt
    gen: int = 32  # bench decoded tokens
    repeats: int = 3  # bench timed runs
    warmup: int = 1  # bench untimed runs
    bootstrap: int = 1000  # resamples of each 95% interval
    threads: int = 1  # torch threads while timing and scoring
    seed: int = 0  # bootstrap resampling

    def __post_init__(self) -> None:
        require(len(self.models) > 0, "models", "give models=A,B,...")
        require(len(self.quant) > 0, "quant", "give quant=none,int8,...")
        require(self.hardware in profile_names(), "hardware",
                f"invalid value {self.hardware!r}; valid choices: {', '.join(profile_names())}")
        require(self.prompt + self.gen <= self.context, "context",
                f"the bench's prompt + gen ({self.prompt} + {self.gen}) must fit the context budget {self.context}")
        for key in ("context", "repeats", "bootstrap", "threads"):
            require(getattr(self, key) > 0, key, f"must be positive, got {getattr(self, key)}")
        require(self.shots >= 0 and self.warmup >= 0, "shots", "shots and warmup must be >= 0")
        # read now, before minutes of benchmarking (and for models without a tokenizer, whose scores are skipped)
        from slmtrain.eval.suites import check_task_name

        for name in self.tasks:
            check_task_name(name)
        for path in self.text:
            require(Path(path).is_file(), "text", f"{path} not found")


@dataclass(frozen=True)
class Entry:
    model: str
    quant: str
    options: LeaderboardOptions
    profile: DeviceProfile


# ---------------------------------------------------------------------------------------------------- scoring
def bootstrap_interval(samples: Sequence[Sequence[float]], statistic: Callable[..., float], resamples: int,
                       seed: int) -> tuple[float | None, float | None]:
    """95% percentile interval of ``statistic`` over items resampled with replacement (paired across the
    sequences); (None, None) with fewer than two items."""
    from scipy.stats import bootstrap

    if len(samples[0]) < 2:
        return None, None
    arrays = tuple(np.asarray(s, dtype=float) for s in samples)
    if all(np.all(a == a[0]) for a in arrays):  # every resample is the same: the interval is the point
        value = float(statistic(*arrays))
        return value, value
    result = bootstrap(arrays, statistic, n_resamples=resamples, paired=True, vectorized=False,
                       method="percentile", rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def bits_per_byte_of(nll: np.ndarray, size: np.ndarray) -> float:
    return float(nll.sum() / size.sum() / math.log(2))


def mean_of(values: np.ndarray) -> float:
    return float(values.mean())


def capability(model: Any, tokenizer: Any, options: LeaderboardOptions) -> dict[str, Any]:
    """Bits per byte of the held-out documents and each task's headline metric, with bootstrap intervals."""
    from slmtrain.data.shards import read_documents
    from slmtrain.eval.perplexity import perplexity_of_texts
    from slmtrain.eval.scoring import evaluate_task
    from slmtrain.eval.tasks import load_task

    row: dict[str, Any] = {}
    if options.text:
        documents = [perplexity_of_texts(model, tokenizer, [text], window=options.context)
                     for text in read_documents(options.text)]
        nll, size = [d.nll_nats for d in documents], [d.bytes for d in documents]
        row["bits_per_byte"] = bits_per_byte_of(np.asarray(nll), np.asarray(size))
        row["bits_per_byte_low"], row["bits_per_byte_high"] = bootstrap_interval(
            (nll, size), bits_per_byte_of, options.bootstrap, options.seed)
    for name in options.tasks:
        result = evaluate_task(model, tokenizer, load_task(name), options.shots, options.limit,
                               max_new_tokens=options.max_new_tokens)
        metric = result.headline
        key = f"{result.task}.{metric}"
        row[key] = result.metrics[metric]
        row[f"{key}_low"], row[f"{key}_high"] = bootstrap_interval(
            (result.scores[metric],), mean_of, options.bootstrap, options.seed)
        row.update({f"{result.task}.{other}": value for other, value in result.metrics.items() if other != metric})
    return row


def evaluate_entry(entry: Entry) -> dict[str, Any]:
    """Load, quantise, time, then score one (model, precision) in this (fresh) process."""
    try:
        return _evaluate_entry(entry)
    except (ConfigError, UserError, FileNotFoundError, ValueError) as e:  # re-raised as one picklable line
        raise UserError(f"{entry.model} ({entry.quant}): {e}") from None


def _evaluate_entry(entry: Entry) -> dict[str, Any]:
    import torch

    from slmtrain.artifacts import load_model
    from slmtrain.eval.quantize import quantize_model
    from slmtrain.eval.runtime import bench_device, reset_peak_memory

    options = entry.options
    torch.set_num_threads(options.threads)
    loaded = load_model(entry.model, getattr(torch, DTYPES[options.dtype]))
    model, tokenizer, source, random_weights = loaded.model, loaded.tokenizer, loaded.source, loaded.random_weights
    del loaded
    if options.context > model.config.max_seq_len:
        raise UserError(f"the context budget {options.context} exceeds max_seq_len={model.config.max_seq_len}")
    skipped: list[str] = []
    if entry.quant != "none":
        model, skipped = quantize_model(model, entry.quant)  # the float model is dropped: only this one is kept
    reset_peak_memory()
    cost = bench_device(model, options.prompt, options.gen, 0, options.repeats, options.warmup, entry.profile)
    row: dict[str, Any] = {
        "model": entry.model, "quant": entry.quant, "source": source, "params": cost.params,
        "weight_bytes": cost.weight_bytes, "float_layers": len(skipped),
        "prefill_tokens_per_s": cost.prefill_tokens_per_s, "decode_tokens_per_s": cost.decode_tokens_per_s,
        "decode_tokens_per_s_std": cost.decode_tokens_per_s_std, "ttft_s": cost.ttft_s,
        "decode_latency_ms": 1000 / cost.decode_tokens_per_s,
        "predicted_decode_tokens_per_s": cost.predicted_decode_tokens_per_s,
        "peak_memory_bytes": cost.peak_memory_bytes, "peak_memory_kind": cost.peak_memory_kind,
        "energy_j_per_decode_token": cost.energy_j_per_decode_token, "energy_source": cost.energy_source,
        "capability": "n/a (random weights)" if random_weights else "n/a (no tokenizer)" if tokenizer is None
        else "scored",
    }
    if row["capability"] == "scored":
        row.update(capability(model, tokenizer, options))
    return row


def leaderboard(options: LeaderboardOptions) -> list[dict[str, Any]]:
    """One row per model x precision, each measured in a fresh process; progress to stderr."""
    profile = get_profile(options.hardware)
    entries = [Entry(model, quant, options, profile) for model in options.models for quant in options.quant]
    rows = []
    for entry, row in zip(entries, in_fresh_processes(evaluate_entry, entries, PRELOAD)):
        rows.append(row)
        print(f"[{len(rows)}/{len(entries)}] {entry.model} ({entry.quant}): decode "
              f"{row['decode_tokens_per_s']:.3g} tok/s, bits/byte {row.get('bits_per_byte', 'n/a')}",
              file=sys.stderr, flush=True)
    scored = [r for r in rows if "bits_per_byte" in r]
    for axis in ("decode_latency_ms", "peak_memory_bytes"):
        flags = pareto_flags([(r["bits_per_byte"], r[axis]) for r in scored])
        for row in rows:
            row[f"pareto_{axis.removesuffix('_ms').removesuffix('_bytes')}"] = (
                flags[scored.index(row)] if row in scored else None)
    return rows


# ---------------------------------------------------------------------------------------------------- output
def _interval(row: dict[str, Any], key: str, digits: int = 3) -> str:
    if row.get(key) is None:
        return "n/a"
    low, high = row.get(f"{key}_low"), row.get(f"{key}_high")
    return f"{row[key]:.{digits}f}" + (f" [{low:.{digits}f}, {high:.{digits}f}]" if low is not None else "")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    keys = dict.fromkeys(k for r in rows for k in r)
    headline = [k.removesuffix("_low") for k in keys if k.endswith("_low") and k != "bits_per_byte_low"]
    columns = ["model", "quant", "bits/byte [95% CI]", *headline, "decode tok/s", "prefill tok/s", "TTFT ms",
               "peak MiB", "weights MiB", "energy mJ/token", "Pareto (latency / memory)"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        energy = f"{row['energy_j_per_decode_token'] * 1e3:.3g}" + (
            "" if row["energy_source"].startswith("rapl") else " (est.)")
        pareto = ("n/a" if row["pareto_decode_latency"] is None
                  else f"{'yes' if row['pareto_decode_latency'] else 'no'} / {'yes' if row['pareto_peak_memory'] else 'no'}")
        cells = [row["model"], row["quant"], _interval(row, "bits_per_byte"), *(_interval(row, k) for k in headline),
                 f"{row['decode_tokens_per_s']:.3g}", f"{row['prefill_tokens_per_s']:.3g}",
                 f"{row['ttft_s'] * 1e3:.3g}", f"{row['peak_memory_bytes'] / 2**20:.0f}",
                 f"{row['weight_bytes'] / 2**20:.2f}", energy, pareto]
        lines.append("| " + " | ".join(cells) + " |")
    if any(r["capability"] != "scored" for r in rows):
        lines.append("\nn/a: " + "; ".join(f"{r['model']} ({r['quant']}): {r['capability']}" for r in rows
                                          if r["capability"] != "scored"))
    sources = sorted({r["energy_source"] for r in rows})
    lines.append(f"\nenergy: {'; '.join(sources)}. Peak memory: {rows[0]['peak_memory_kind']} during the bench.")
    return "\n".join(lines)


def plot_pareto(rows: list[dict[str, Any]], axis: str, label: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [r for r in rows if "bits_per_byte" in r]
    scale = 1 if axis == "decode_latency_ms" else 2**-20
    flag = f"pareto_{axis.removesuffix('_ms').removesuffix('_bytes')}"
    fig, ax = plt.subplots(figsize=(7, 5))
    for row in scored:
        ax.scatter(row[axis] * scale, row["bits_per_byte"], color="tab:red" if row[flag] else "gray")
        ax.annotate(f"{row['model']} ({row['quant']})", (row[axis] * scale, row["bits_per_byte"]), fontsize=7,
                    textcoords="offset points", xytext=(5, 3))
    front = sorted((r for r in scored if r[flag]), key=lambda r: r[axis])
    ax.plot([r[axis] * scale for r in front], [r["bits_per_byte"] for r in front], "-", color="tab:red",
            label="Pareto front")
    if not scored:
        ax.text(0.5, 0.5, "no capability scores (random-weight models: cost only)", ha="center",
                transform=ax.transAxes)
    ax.set(xlabel=label, ylabel="bits per byte (held-out text, lower is better)", title=f"quality vs {label}")
    if front:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_leaderboard(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """leaderboard.csv (every figure), leaderboard.md, and the two Pareto plots."""
    from slmtrain.eval.report import append_csv

    try:
        out.mkdir(parents=True, exist_ok=True)
        csv_path = out / "leaderboard.csv"
        csv_path.unlink(missing_ok=True)  # this run's rows only
        append_csv(csv_path, rows)
        markdown = out / "leaderboard.md"
        markdown.write_text(markdown_table(rows) + "\n")
    except OSError as e:
        raise UserError(f"cannot write to {out}: {e.strerror}") from None
    return [csv_path, markdown,
            plot_pareto(rows, "decode_latency_ms", "decode latency (ms/token)", out / "pareto_latency.png"),
            plot_pareto(rows, "peak_memory_bytes", "peak memory (MiB)", out / "pareto_memory.png")]

