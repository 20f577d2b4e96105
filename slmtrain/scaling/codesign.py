"""Hardware co-design: choose a model's shape on the device it will run on.

At equal parameter count, decode speed on a device depends on the shape (depth vs width, heads and KV heads, FFN
ratio, vocabulary) and the precision, while the scaling law predicts loss from the parameter count and the tokens
alone. So: enumerate shapes inside a parameter range (widths multiples of 128, head dims 64/128, FFN widths
multiples of 128), measure a sample of them on this machine with random weights (runtime does not depend on their
values), predict each one's loss at the planned token budget from a law of :mod:`slmtrain.scaling.laws`, and keep
the Pareto front of predicted loss against measured decode latency, under memory and speed constraints.

- Loss: L(N, D) with N the non-embedding parameters (Kaplan et al.'s N: at 100M-400M the vocabulary table is a
  large, shape-independent share of the total, which a total-N law would reward as if it were capacity). There is
  no depth/width correction: none has been fitted to data here, so shapes of equal N predict equal loss and the
  front trades N against latency. The law sees no benefit in a larger vocabulary or an untied head either, so
  those choices only show their cost.
- Measurement: a function the caller passes (the command passes :func:`slmtrain.eval.runtime.bench_shape`; scaling
  sits below evaluation and imports none of it), returning prefill tokens/s and time to first token on a
  ``prompt``-token prompt, decode tokens/s with ``context`` tokens in the KV cache, and peak memory. Every
  measurement runs in a fresh process (:mod:`slmtrain.fresh_process`: the process's peak RSS never goes down, so it
  is only the candidate's own in a fresh process); candidates are measured in a new random order each round, so
  drift of a shared machine does not favour one, and the spread across rounds is reported.
- Roofline: decode reads every weight and the KV cache once per token (runtime.predicted_decode_tokens_per_s).
  Measured speed falls short of it by a per-layer cost (kernel launches, norms, RoPE, cache writes: work that
  bandwidth does not predict), so seconds per token = bytes / bandwidth + layers x overhead is fitted to the
  measurements (non-negative least squares) and its leave-one-out error is reported against the roofline's.
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from slmtrain.config import ConfigError, UserError, require
from slmtrain.fresh_process import in_fresh_processes
from slmtrain.hardware import DeviceProfile, get_profile, profile_names
from slmtrain.model import presets
from slmtrain.model.config import ModelConfig
from slmtrain.scaling.budget import choose_tokens
from slmtrain.scaling.devices import SHAPE_FAMILIES
from slmtrain.scaling.laws import ScalingLaw, load_law

WIDTH_MULTIPLE = 128  # d_model and FFN widths: what CPU/GPU matmul kernels tile well
MAX_LAYERS = 64
PUBLISHED_PRESETS = tuple(name for name in presets.names() if not name.startswith(("tiny", "demo")))


@dataclass
class CodesignOptions:
    out: Path  # folder for codesign.json and codesign.png
    params: str = "100e6:400e6"  # MIN:MAX total parameters (embeddings included) of the candidate shapes
    hardware: str = "host"  # roofline and memory limit: host (measured here) or a slmtrain.hardware profile
    precision: Literal["bf16", "int8", "int4"] = "bf16"  # weights as run: bf16, or slmtrain.eval.quantize over bf16
    context: int = 2048  # tokens in the KV cache while decode speed is measured
    tokens: float | None = None  # planned training tokens; None: each shape's compute-optimal tokens under law
    law: str = "epoch"  # scaling law (slmtrain.scaling.laws name or file) predicting the loss
    min_decode_tokens_per_s: float = 0.0  # constraint: measured decode speed at the context
    max_memory: float | None = None  # constraint: measured peak memory in bytes (default: the device's memory)
    family: Literal["any", "balanced", "deep-thin"] = "any"  # keep shapes whose d_model/n_layer is nearest this family
    vocab: list[int] = field(default_factory=lambda: [32000, 49152])  # vocabulary sizes to try
    tied: list[bool] = field(default_factory=lambda: [True])  # tied / untied embeddings to try
    head_dims: list[int] = field(default_factory=lambda: [64, 128])  # attention head dimensions to try
    kv_groups: list[int] = field(default_factory=lambda: [1, 4])  # query heads per KV head (1: MHA)
    ffn_ratios: list[float] = field(default_factory=lambda: [2.6667, 4.0])  # SwiGLU width / d_model
    widths: str = "256:2048"  # MIN:MAX d_model, stepped by 128
    max_candidates: int = 16  # candidate budget: shapes sampled (fixed seed) from all that fit the range
    compare_presets: bool = True  # also measure the published presets inside the range, for comparison
    rounds: int = 2  # each round measures every shape once, in a fresh random order
    time_budget_s: float = 900.0  # no new measurement starts after this; shapes never measured are dropped
    prompt: int = 128  # prefill / TTFT prompt length
    gen: int = 8  # decoded tokens per decode measurement
    threads: int = 1  # torch threads of every measurement
    seed: int = 0  # candidate sample and measurement order
    format: Literal["table", "json"] = "table"  # what the command prints

    def __post_init__(self) -> None:
        require(self.hardware in profile_names(), "hardware",
                f"invalid value {self.hardware!r}; valid choices: {', '.join(profile_names())}")
        parse_range("params", self.params)
        parse_range("widths", self.widths)
        for key in ("context", "max_candidates", "rounds", "prompt", "gen", "threads"):
            require(getattr(self, key) > 0, key, f"must be positive, got {getattr(self, key)}")
        require(self.gen < self.context, "gen", f"must be below context={self.context}")
        require(self.prompt <= self.context, "prompt", f"must not exceed context={self.context}")
        require(self.time_budget_s > 0, "time_budget_s", f"must be positive, got {self.time_budget_s}")
        require(self.tokens is None or self.tokens > 0, "tokens", f"must be positive, got {self.tokens}")
        for key in ("vocab", "tied", "head_dims", "kv_groups", "ffn_ratios"):
            require(len(getattr(self, key)) > 0, key, "needs at least one value")
        require(all(h % 2 == 0 and h > 0 for h in self.head_dims), "head_dims", "must be positive and even (RoPE)")


def parse_range(key: str, text: str) -> tuple[float, float]:
    """``MIN:MAX`` (numbers such as 100e6) -> (MIN, MAX)."""
    try:
        low, high = (float(part) for part in text.split(":"))
    except ValueError:
        raise ConfigError(key, f"expected MIN:MAX such as 100e6:400e6, got {text!r}") from None
    require(0 < low <= high, key, f"need 0 < MIN <= MAX, got {text!r}")
    return low, high


# ---------------------------------------------------------------------------------------------------- shapes
def shape_name(config: ModelConfig) -> str:
    return (f"L{config.n_layer}-d{config.d_model}-h{config.n_head}kv{config.kv_heads}-hd{config.head_dim_}"
            f"-f{config.ffn_dim}-v{config.vocab_size}-{'tied' if config.tie_embeddings else 'untied'}")


def family_of(config: ModelConfig) -> str:
    """The scaling.devices family whose aspect ratio d_model / n_layer is nearest (in log) to this shape's."""
    aspect = config.d_model / config.n_layer
    return min(SHAPE_FAMILIES, key=lambda name: abs(math.log(aspect / SHAPE_FAMILIES[name])))


def enumerate_shapes(options: CodesignOptions) -> list[ModelConfig]:
    """Every Llama-style shape (SwiGLU, RMSNorm, RoPE) in the parameter range, in a fixed order."""
    low, high = parse_range("params", options.params)
    width_low, width_high = parse_range("widths", options.widths)
    shapes = []
    for d_model in range(WIDTH_MULTIPLE, int(width_high) + 1, WIDTH_MULTIPLE):
        if d_model < width_low:
            continue
        for head_dim in options.head_dims:
            n_head = d_model // head_dim
            if n_head == 0 or d_model % head_dim:
                continue
            for group in options.kv_groups:
                if n_head % group:
                    continue
                for ratio in options.ffn_ratios:
                    ffn_hidden = max(WIDTH_MULTIPLE, round(ratio * d_model / WIDTH_MULTIPLE) * WIDTH_MULTIPLE)
                    for vocab in options.vocab:
                        for tied in options.tied:
                            for n_layer in range(2, MAX_LAYERS + 1):
                                config = ModelConfig(vocab_size=vocab, n_layer=n_layer, d_model=d_model,
                                                     n_head=n_head, n_kv_head=n_head // group, head_dim=head_dim,
                                                     ffn_hidden=ffn_hidden, tie_embeddings=tied,
                                                     max_seq_len=options.context)
                                if config.params() > high:
                                    break
                                if config.params() >= low and options.family in ("any", family_of(config)):
                                    shapes.append(config)
    return shapes


def sample_candidates(options: CodesignOptions) -> list[ModelConfig]:
    """``max_candidates`` shapes drawn with ``seed`` from the enumeration: the same seed, the same list."""
    shapes = enumerate_shapes(options)
    if not shapes:
        raise UserError(f"no shape of widths {options.widths} and family {options.family} has {options.params} "
                        "parameters; widen params= or widths=")
    chosen = random.Random(options.seed).sample(range(len(shapes)), min(options.max_candidates, len(shapes)))
    return [shapes[i] for i in sorted(chosen)]


def reference_presets(options: CodesignOptions) -> dict[str, ModelConfig]:
    """Published presets whose parameter count lies in the range and whose context reaches ``context``."""
    low, high = parse_range("params", options.params)
    chosen = {}
    for name in PUBLISHED_PRESETS:
        config = presets.get(name)
        if low <= config.params() <= high and config.max_seq_len >= options.context:
            chosen[name] = config
    return chosen


# ---------------------------------------------------------------------------------------------------- measuring
@dataclass(frozen=True)
class Job:
    name: str
    config: dict[str, Any]  # ModelConfig fields
    precision: str
    context: int
    prompt: int
    gen: int
    threads: int
    profile: DeviceProfile


class Measurement(Protocol):
    """What co-design reads of one measurement (slmtrain.eval.runtime.RuntimeResult has these and more)."""

    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    ttft_s: float
    peak_memory_bytes: int
    weight_bytes: int
    predicted_decode_tokens_per_s: float


def measure_all(jobs: list[Job], rounds: int, time_budget_s: float, seed: int,
                measure: Callable[[Job], Measurement], preload: tuple[str, ...] = ()) -> dict[str, list[Measurement]]:
    """Each round measures every job once in a new random order, each measurement in a fresh process (whose server
    imports ``preload`` once); no measurement starts once ``time_budget_s`` has passed. Progress goes to stderr."""
    order = random.Random(seed + 1)
    schedule = [(round_index, job) for round_index in range(rounds) for job in order.sample(jobs, len(jobs))]
    results: dict[str, list[Measurement]] = {job.name: [] for job in jobs}
    start, done = time.perf_counter(), 0

    def within_budget():  # read lazily: a job is handed out only when the one before it has finished
        for round_index, job in schedule:
            if time.perf_counter() - start > time_budget_s:
                print(f"time budget of {time_budget_s:g} s spent after {done}/{len(schedule)} measurements",
                      file=sys.stderr)
                return
            yield job

    for (round_index, job), result in zip(schedule, in_fresh_processes(measure, within_budget(), preload)):
        results[job.name].append(result)
        done += 1
        print(f"[{done}/{len(schedule)}] round {round_index + 1} {job.name}: decode "
              f"{result.decode_tokens_per_s:.3g} tok/s, prefill {result.prefill_tokens_per_s:.3g} tok/s "
              f"({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    return results


# ---------------------------------------------------------------------------------------------------- analysis
def pareto_flags(points: list[tuple[float, float]]) -> list[bool]:
    """For (loss, latency) points, lower being better in both: True where no other point is at least as good in
    both and better in one."""
    def dominated(i: int) -> bool:
        loss, latency = points[i]
        return any(other_loss <= loss and other_latency <= latency and (other_loss, other_latency) != (loss, latency)
                   for other_loss, other_latency in points)

    return [not dominated(i) for i in range(len(points))]


def fit_decode_overhead(rows: list[dict[str, Any]], bandwidth: float) -> dict[str, Any]:
    """Fit seconds per decoded token = bytes / fitted_bandwidth + n_layer x overhead (non-negative least squares)
    to the measured shapes, where bytes are those the roofline counts (weights and the KV cache at the context).
    Errors are mean |predicted / measured - 1|; the fit's is leave-one-out, so it is not scored on its own data."""
    import numpy as np
    from scipy.optimize import nnls

    if len(rows) < 3:
        return {"fitted": False, "reason": f"needs at least 3 measured shapes, got {len(rows)}"}
    bytes_read = np.array([bandwidth / r["predicted_decode_tokens_per_s"] for r in rows])
    layers = np.array([float(r["n_layer"]) for r in rows])
    seconds = np.array([1.0 / r["measured_decode_tokens_per_s"] for r in rows])
    features = np.stack([bytes_read, layers], axis=1)
    scale = features.max(axis=0)  # columns of similar magnitude for the solver

    def solve(mask: np.ndarray) -> np.ndarray:
        coefficients, _ = nnls(features[mask] / scale, seconds[mask])
        return coefficients / scale

    coefficients = solve(np.ones(len(rows), dtype=bool))
    loo = np.array([features[i] @ solve(np.arange(len(rows)) != i) for i in range(len(rows))])
    roofline = bytes_read / bandwidth
    per_byte, per_layer = (float(c) for c in coefficients)
    return {
        "fitted": True, "model": "s/token = bytes / fitted_bandwidth + n_layer * per_layer_overhead_s",
        "fitted_bandwidth_bytes_per_s": 1 / per_byte if per_byte > 0 else None,
        "bandwidth_fraction_of_profile": (1 / per_byte) / bandwidth if per_byte > 0 else None,
        "per_layer_overhead_s": per_layer,
        "roofline_mean_abs_error": float(np.mean(np.abs(roofline / seconds - 1))),
        "fitted_loo_mean_abs_error": float(np.mean(np.abs(loo / seconds - 1))),
        "coefficients": (per_byte, per_layer),
    }


def explain_disagreement(fit: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    if not fit["fitted"]:
        return f"no overhead fit: {fit['reason']}"
    ratios = [r["measured_decode_tokens_per_s"] / r["predicted_decode_tokens_per_s"] for r in rows]
    deepest = max(rows, key=lambda r: r["n_layer"])
    overhead_share = deepest["n_layer"] * fit["per_layer_overhead_s"] * deepest["measured_decode_tokens_per_s"]
    bandwidth = fit["bandwidth_fraction_of_profile"]
    return (f"measured decode reaches {min(ratios):.0%}-{max(ratios):.0%} of the roofline (median "
            f"{statistics.median(ratios):.0%}). Fitted: {fit['per_layer_overhead_s'] * 1e6:.0f} us per layer per token, "
            f"which is {overhead_share:.0%} of the deepest shape's ({deepest['n_layer']} layers) token time, and "
            + (f"{bandwidth:.0%} of the profile's bandwidth on the bytes" if bandwidth else "no bandwidth-bound term")
            + f". Mean error of the prediction: roofline {fit['roofline_mean_abs_error']:.0%}, roofline + per-layer "
            f"overhead {fit['fitted_loo_mean_abs_error']:.0%} (leave-one-out).")


def distance_to_front(row: dict[str, Any], front: list[dict[str, Any]]) -> dict[str, Any]:
    """How far a point is from the front: the loss the front reaches at no more latency, and the front's speed at
    no more loss."""
    faster = [f for f in front if f["decode_latency_ms"] <= row["decode_latency_ms"]]
    better = [f for f in front if f["predicted_loss"] <= row["predicted_loss"]]
    best_loss = min(faster, key=lambda f: f["predicted_loss"]) if faster else None
    fastest = min(better, key=lambda f: f["decode_latency_ms"]) if better else None
    return {
        "name": row["name"], "on_front": row["pareto"],
        "front_loss_at_same_latency": best_loss["predicted_loss"] if best_loss else None,
        "loss_gap": row["predicted_loss"] - best_loss["predicted_loss"] if best_loss else None,
        "front_point_at_same_latency": best_loss["name"] if best_loss else None,
        "front_speedup_at_same_loss": row["decode_latency_ms"] / fastest["decode_latency_ms"] if fastest else None,
        "front_point_at_same_loss": fastest["name"] if fastest else None,
    }


def shape_fields(config: ModelConfig) -> dict[str, Any]:
    """The knobs the search varies, resolved (KV heads, head dim and FFN width as the model builds them)."""
    return {"n_layer": config.n_layer, "d_model": config.d_model, "n_head": config.n_head,
            "n_kv_head": config.kv_heads, "head_dim": config.head_dim_, "ffn_hidden": config.ffn_dim,
            "vocab_size": config.vocab_size, "tie_embeddings": config.tie_embeddings}


def mean_and_spread(values: list[float]) -> tuple[float, float | None]:
    """Mean and relative standard deviation (None from a single value)."""
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) / mean if len(values) > 1 else None


def summarise(name: str, kind: str, config: ModelConfig, measurements: list[Measurement], law: ScalingLaw,
              tokens: float | None) -> dict[str, Any]:
    """One shape's JSON row: shape, parameters, predicted loss, and the mean (and spread) of its measurements."""
    non_embedding = config.non_embedding_params()
    planned = tokens if tokens is not None else choose_tokens("chinchilla", non_embedding, law=law).tokens
    row: dict[str, Any] = {"name": name, "kind": kind, **shape_fields(config), "family": family_of(config),
                           "params": config.params(), "non_embedding_params": non_embedding, "tokens": planned,
                           "predicted_loss": law.loss(non_embedding, planned), "rounds_measured": len(measurements)}
    for key in ("prefill_tokens_per_s", "decode_tokens_per_s", "ttft_s"):
        row[f"measured_{key}"], row[f"measured_{key}_spread"] = mean_and_spread(
            [getattr(m, key) for m in measurements])
    row["peak_memory_bytes"], row["peak_memory_bytes_spread"] = mean_and_spread(
        [m.peak_memory_bytes for m in measurements])
    row["weight_bytes"] = measurements[0].weight_bytes
    row["predicted_decode_tokens_per_s"] = measurements[0].predicted_decode_tokens_per_s
    row["decode_latency_ms"] = 1000 / row["measured_decode_tokens_per_s"]
    row["config"] = dataclasses.asdict(config)
    return row


def codesign(options: CodesignOptions, measure: Callable[[Job], Measurement],
             preload: tuple[str, ...] = ()) -> dict[str, Any]:
    """Measure the sampled shapes (and the published presets in range) with ``measure`` (each call in a fresh
    process; ``preload``: modules it needs, imported once), predict their loss, and find the front."""
    law = load_law(options.law)
    profile = get_profile(options.hardware)
    shapes = {shape_name(c): ("candidate", c) for c in sample_candidates(options)}
    if options.compare_presets:
        shapes.update({name: ("preset", c) for name, c in reference_presets(options).items()})
    jobs = [Job(name, dataclasses.asdict(config), options.precision, options.context, options.prompt, options.gen,
                options.threads, profile) for name, (_, config) in shapes.items()]
    measurements = measure_all(jobs, options.rounds, options.time_budget_s, options.seed, measure, preload)
    rows = [summarise(name, kind, config, measurements[name], law, options.tokens)
            for name, (kind, config) in shapes.items() if measurements[name]]
    if not rows:
        raise UserError(f"time_budget_s={options.time_budget_s:g} ended before any shape was measured")
    max_memory = options.max_memory if options.max_memory is not None else profile.memory_bytes
    for row in rows:
        row["feasible"] = (row["peak_memory_bytes"] <= max_memory
                           and row["measured_decode_tokens_per_s"] >= options.min_decode_tokens_per_s)
    feasible = [row for row in rows if row["feasible"]]
    for row, on_front in zip(feasible, pareto_flags([(r["predicted_loss"], r["decode_latency_ms"]) for r in feasible])):
        row["pareto"] = on_front
    for row in rows:
        row.setdefault("pareto", False)
    fit = (fit_decode_overhead(rows, profile.memory_bandwidth) if options.hardware == "host"
           else {"fitted": False, "reason": f"the roofline is for {profile.name}, the measurements for this host"})
    for row in rows:
        row["fitted_decode_tokens_per_s"] = (
            1 / (fit["coefficients"][0] * profile.memory_bandwidth / row["predicted_decode_tokens_per_s"]
                 + fit["coefficients"][1] * row["n_layer"]) if fit["fitted"] else None)
    front = sorted((row for row in rows if row["pareto"]), key=lambda r: r["decode_latency_ms"])
    recommended = min(front, key=lambda r: r["predicted_loss"])["name"] if front else None
    spreads = [r["measured_decode_tokens_per_s_spread"] for r in rows if r["measured_decode_tokens_per_s_spread"]]
    return {
        "candidates": rows, "recommended": recommended,
        "front": [r["name"] for r in front],
        "presets_vs_front": [distance_to_front(r, front) for r in rows if r["kind"] == "preset"] if front else [],
        "constraints": {"max_memory_bytes": max_memory, "min_decode_tokens_per_s": options.min_decode_tokens_per_s,
                        "infeasible": [r["name"] for r in rows if not r["feasible"]]},
        "law": {"name": law.name, **law.constants(), "source": law.source,
                "params": "non-embedding", "tokens": options.tokens if options.tokens is not None
                else "each shape's compute-optimal tokens under the law",
                "depth_width_correction": "none (no correction has been fitted to data)"},
        "decode_fit": {key: value for key, value in fit.items() if key != "coefficients"},
        "explanation": explain_disagreement(fit, rows),
        "measurement": {"precision": options.precision, "context": options.context, "prompt": options.prompt,
                        "gen": options.gen, "threads": options.threads, "rounds": options.rounds,
                        "shapes_enumerated": len(enumerate_shapes(options)), "shapes_measured": len(rows),
                        "not_measured": [name for name in shapes if not measurements[name]],
                        "median_decode_spread": statistics.median(spreads) if spreads else None,
                        "peak_memory": "peak RSS of a fresh process forked from a server holding torch, counted "
                                       "from the loaded (and quantised) model (the runtime itself included)", "device": "this host (random weights)"},
        "device_profile": dataclasses.asdict(profile),  # the hardware= profile (key kept: codesign.json readers)
        "options": {key: str(value) if isinstance(value, Path) else value
                    for key, value in dataclasses.asdict(options).items()},
    }


# ---------------------------------------------------------------------------------------------------- output
TABLE_COLUMNS = ("name", "kind", "params", "predicted_loss", "measured_decode_tokens_per_s",
                 "measured_decode_tokens_per_s_spread", "predicted_decode_tokens_per_s", "fitted_decode_tokens_per_s",
                 "measured_prefill_tokens_per_s", "measured_ttft_s", "peak_memory_bytes", "feasible", "pareto")


def plot_front(result: dict[str, Any], path: Path) -> Path:
    """Predicted loss against measured decode latency: every shape, the front as a line, presets labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["candidates"]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    shapes = [r for r in rows if r["kind"] == "candidate"]
    ax.scatter([r["decode_latency_ms"] for r in shapes], [r["predicted_loss"] for r in shapes], c="lightgray",
               edgecolors="gray", label="candidate shapes")
    front = [r for r in sorted(rows, key=lambda r: r["decode_latency_ms"]) if r["pareto"]]
    ax.plot([r["decode_latency_ms"] for r in front], [r["predicted_loss"] for r in front], "o-", color="tab:red",
            label="Pareto front")
    for row in (r for r in rows if r["kind"] == "preset"):
        ax.scatter(row["decode_latency_ms"], row["predicted_loss"], marker="*", s=160, color="tab:blue", zorder=3)
        ax.annotate(row["name"], (row["decode_latency_ms"], row["predicted_loss"]), textcoords="offset points",
                    xytext=(6, 4), fontsize=8)
    for row in (r for r in rows if r["name"] == result["recommended"]):
        ax.scatter(row["decode_latency_ms"], row["predicted_loss"], s=300, facecolors="none", edgecolors="black",
                   label=f"recommended: {row['name']}", zorder=4)
    measurement = result["measurement"]
    ax.set(xlabel=f"measured decode latency at context {measurement['context']} (ms/token, "
                  f"{measurement['threads']} thread(s))",
           ylabel=f"predicted loss ({result['law']['name']} law, non-embedding N)",
           title=f"co-design front: {measurement['precision']} on {result['device_profile']['name']}")
    ax.scatter([], [], marker="*", s=160, color="tab:blue", label="published presets")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(result: dict[str, Any], out: Path) -> tuple[Path, Path]:
    import json

    try:
        out.mkdir(parents=True, exist_ok=True)
        json_path = out / "codesign.json"
        json_path.write_text(json.dumps(result, indent=2))
    except OSError as e:
        raise UserError(f"cannot write to {out}: {e.strerror}") from None
    return json_path, plot_front(result, out / "codesign.png")
