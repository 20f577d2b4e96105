"""``launch/route.py calibrate | eval``: fit and calibrate a router on your data, measure it on held-out data. The
``demo`` (the whole path on sums, the larger model behind a real server) spans rooms: ``slmtrain.orchestrate``."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slmtrain.collab.calibration import GRID, calibrate_threshold, require_enough_examples
from slmtrain.collab.routing import (Answering, LocalModel, Outcome, Router, collect_outcomes, open_cloud,
                                     prompt_embeddings, read_examples)
from slmtrain.config import ConfigError, UserError


@dataclass
class CalibrateOptions:
    local: str  # the on-device model: what load_model takes
    cloud: str  # an OpenAI-compatible base URL (http://HOST:PORT/v1) or a local model path
    data: Path  # JSONL of {"prompt", "answer"}: split into a router-fitting part and a calibration part
    out: Path  # the router file to write (JSON)
    target: float = 0.95  # keep quality >= target x cloud-only quality
    confidence: float = 0.95  # probability that the guarantee holds (over the calibration draw)
    cloud_key: str | None = None  # API key of the cloud endpoint
    cloud_model: str | None = None  # model id at the cloud endpoint (default: the first it lists)
    cloud_timeout_s: float = 30.0  # a cloud call slower than this falls back to the local answer
    fit_fraction: float = 0.3  # share of the data that fits the router; the rest calibrates its threshold
    embedding: bool = True  # add the prompt's MiniLM embedding to the router's features
    max_tokens: int = 32  # new tokens per answer
    stop: list[str] = field(default_factory=lambda: ["\n"])  # answers end at the first of these
    samples: int = 0  # sampled local answers per query for the agreement signal (0: none)
    seed: int = 0  # data split and sampling seed

    def __post_init__(self) -> None:
        for key in ("target", "confidence", "fit_fraction"):
            if not 0 < getattr(self, key) < 1:
                raise ConfigError(key, f"must be in (0, 1), got {getattr(self, key)}")
        if self.max_tokens < 1 or self.samples < 0:
            raise ConfigError("max_tokens" if self.max_tokens < 1 else "samples", "out of range")


@dataclass
class EvalOptions:
    router: Path  # a router file written by calibrate
    data: Path  # held-out JSONL of {"prompt", "answer"} (not the calibration data)
    local: str | None = None  # default: the local model recorded in the router file
    cloud: str | None = None  # default: the cloud recorded in the router file
    cloud_key: str | None = None  # API key of the cloud endpoint
    cloud_timeout_s: float = 30.0  # a cloud call slower than this falls back to the local answer
    price_per_million_tokens: float = 1.0  # cloud price per million tokens sent and received (cost column)
    plot: Path | None = None  # quality-vs-cloud-fraction plot (default: the router file with .png)


def calibrate(options: CalibrateOptions) -> dict[str, Any]:
    """Answer every example with both models, fit the router on one split and its threshold on the other."""
    examples = read_examples(options.data)
    random.Random(options.seed).shuffle(examples)
    n_fit = round(len(examples) * options.fit_fraction)
    if n_fit < 10:
        raise UserError(f"{options.data}: {len(examples)} examples leave {n_fit} to fit the router; give at least "
                        f"{int(np.ceil(10 / options.fit_fraction))}")
    answering = Answering(options.max_tokens, list(options.stop), options.samples, options.seed)
    local = LocalModel(options.local, answering)
    cloud = open_cloud(options.cloud, options.cloud_key, options.cloud_model, answering, options.cloud_timeout_s)
    outcomes = collect_outcomes(examples, local, cloud)
    embeddings = prompt_embeddings([e.prompt for e in examples]) if options.embedding else None
    fit, held = outcomes[:n_fit], outcomes[n_fit:]
    try:
        require_enough_examples(np.array([o.cloud_correct for o in held]), options.target, options.confidence)
    except UserError as e:
        raise UserError(f"{e} (data has {len(examples)} examples, {options.fit_fraction:.0%} of them fit the "
                        "router; the rest calibrate)") from None
    router = Router.fit(fit, None if embeddings is None else embeddings[:n_fit],
                        {"local": local.fingerprint, "cloud": cloud.fingerprint}, answering)
    scores = router.scores(held, None if embeddings is None else embeddings[n_fit:])
    router.calibration = calibrate_threshold(scores, np.array([o.local_correct for o in held]),
                                             np.array([o.cloud_correct for o in held]), options.target,
                                             options.confidence)
    router.save(options.out)
    return {"router": str(options.out), "fit_examples": n_fit, **router.calibration.as_dict(),
            "cloud_failures": sum(o.cloud.failed for o in outcomes)}


def evaluate(options: EvalOptions) -> dict[str, Any]:
    """Quality, cloud-call fraction, cost and latency of the calibrated router on held-out data, against always-local,
    always-cloud and random routing at the same cloud fraction; the curve over all thresholds goes to a plot."""
    router = Router.load(options.router)
    answering = router.answering
    local = LocalModel(options.local or router.pair["local"]["path"], answering)
    recorded_cloud = router.pair["cloud"]
    cloud_spec = options.cloud or recorded_cloud.get("base_url") or recorded_cloud["path"]
    cloud = open_cloud(cloud_spec, options.cloud_key, recorded_cloud.get("model"), answering, options.cloud_timeout_s)
    router.check_pair(local.fingerprint, cloud.fingerprint, options.router)
    examples = read_examples(options.data)
    outcomes = collect_outcomes(examples, local, cloud)
    embeddings = prompt_embeddings([e.prompt for e in examples]) if router.embedding else None
    scores = router.scores(outcomes, embeddings)
    assert router.calibration is not None
    price = options.price_per_million_tokens / 1e6
    local_q, cloud_q = _mean([o.local_correct for o in outcomes]), _mean([o.cloud_correct for o in outcomes])
    routed = _policy(outcomes, scores < router.calibration.threshold, price)
    fraction = routed["cloud_fraction"]
    rows = [
        {"policy": "router", **routed},
        {"policy": "always local", **_policy(outcomes, np.zeros(len(outcomes), bool), price)},
        {"policy": "always cloud", **_policy(outcomes, np.ones(len(outcomes), bool), price, needs_local=False)},
        {"policy": f"random at {fraction:.0%} cloud", "quality": (1 - fraction) * local_q + fraction * cloud_q,
         "cloud_fraction": fraction, "cost": fraction * price * sum(o.cloud.tokens for o in outcomes) / len(outcomes),
         "latency_s": _mean([o.local.latency_s for o in outcomes]) + fraction * _mean([o.cloud.latency_s for o in outcomes])},
    ]
    curve = [(float(np.mean(scores < t)), _mean(np.where(scores < t, [o.cloud_correct for o in outcomes],
                                                           [o.local_correct for o in outcomes]))) for t in GRID]
    required = router.calibration.target * cloud_q
    plot = _plot(curve, rows, required, local_q, cloud_q, options.plot or options.router.with_suffix(".png"))
    return {"rows": rows, "examples": len(outcomes), "threshold": router.calibration.threshold,
            "required_quality": required, "guarantee_holds": routed["quality"] >= required,
            "cloud_calls_saved": 1 - fraction, "cloud_failures": sum(o.cloud.failed for o in outcomes),
            "curve": curve, "plot": str(plot)}


def _mean(values: Any) -> float:
    return float(np.mean(np.asarray(values, dtype=np.float64)))


def _policy(outcomes: list[Outcome], to_cloud: np.ndarray, price: float, needs_local: bool = True) -> dict[str, float]:
    """Per-query quality, cloud fraction, cost and latency when ``to_cloud`` marks the queries sent to the cloud (a
    routed query waits for the local answer first: its confidence decides)."""
    correct = [o.cloud_correct if c else o.local_correct for o, c in zip(outcomes, to_cloud)]
    latency = [(o.local.latency_s if needs_local else 0.0) + (o.cloud.latency_s if c else 0.0)
               for o, c in zip(outcomes, to_cloud)]
    return {"quality": _mean(correct), "cloud_fraction": _mean(to_cloud),
            "cost": price * sum(o.cloud.tokens for o, c in zip(outcomes, to_cloud) if c) / len(outcomes),
            "latency_s": _mean(latency)}


def _plot(curve: list[tuple[float, float]], rows: list[dict[str, Any]], required: float, local_q: float,
          cloud_q: float, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    fractions, qualities = zip(*sorted(curve))
    ax.plot(fractions, qualities, label="router (every threshold)")
    ax.plot([0, 1], [local_q, cloud_q], "--", label="random routing")
    ax.axhline(required, color="grey", linestyle=":", label="target x cloud quality")
    ax.plot(rows[0]["cloud_fraction"], rows[0]["quality"], "o", color="red", label="calibrated threshold")
    ax.set_xlabel("fraction of queries sent to the cloud")
    ax.set_ylabel("quality (exact match)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
