"""Local-or-cloud routing: answer each query with the local model, and send it to the cloud only when the local
answer is likely wrong.

The local model's confidence comes from the decoding pass that produced its answer (no extra call): mean and minimum
token log-probability, mean entropy, and optionally the agreement of k sampled answers with the greedy one. A small
learned router (logistic regression over those signals and, optionally, the prompt's MiniLM embedding) turns them
into a score, the estimated probability that the local answer is right; ``calibration`` picks the threshold below
which a query goes to the cloud. The cloud is any OpenAI-compatible endpoint or a local model path. A router file
records the model pair it was fitted on and refuses any other pair.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from slmtrain.artifacts import load_model
from slmtrain.collab.calibration import Calibration
from slmtrain.collab.decoding import Finish, Piece, complete_text
from slmtrain.config import UserError
from slmtrain.eval import document_prefix_id
from slmtrain.model.transformer import Transformer

SIGNALS = ("mean_logprob", "min_logprob", "mean_entropy")  # plus "agreement" when samples > 0


@dataclass
class Example:
    prompt: str
    answer: str


def read_examples(path: str | Path) -> list[Example]:
    """JSONL records ``{"prompt": str, "answer": str}``; a bad line is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file not found: {path}")
    examples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not (isinstance(record.get("prompt"), str) and isinstance(record.get("answer"), str)):
                raise ValueError("needs string fields prompt and answer")
        except (json.JSONDecodeError, ValueError, AttributeError) as e:
            raise UserError(f"{path}:{number}: not a routing record {{\"prompt\": ..., \"answer\": ...}} ({e})") from None
        examples.append(Example(record["prompt"], record["answer"]))
    if not examples:
        raise UserError(f"{path}: no examples")
    return examples


def is_correct(text: str, answer: str) -> bool:
    return text.strip() == answer.strip()


@dataclass
class Answering:
    """How both models answer: greedy, until a stop string or ``max_tokens``."""

    max_tokens: int = 32  # new tokens per answer
    stop: list[str] = field(default_factory=lambda: ["\n"])  # answers end at the first of these
    samples: int = 0  # extra sampled local answers for the agreement signal (0: no agreement signal)
    seed: int = 0  # seed of those samples


# ---------------------------------------------------------------------------------------------------- answerers
@dataclass
class LocalAnswer:
    text: str
    signals: dict[str, float]
    latency_s: float


@dataclass
class CloudAnswer:
    text: str
    tokens: int  # prompt + completion tokens billed
    latency_s: float
    failed: bool  # the cloud erred or timed out: ``text`` is the local answer


def weights_digest(model: Transformer) -> str:
    """A fingerprint of the weights (SHA-256 over every tensor, in name order)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


class LocalModel:
    """A model ``load_model`` takes, answering greedily and reporting its confidence signals."""

    def __init__(self, spec: str, answering: Answering):
        loaded = load_model(spec)
        if loaded.tokenizer is None:
            raise UserError(f"{loaded.source} has no tokenizer: answering text needs one")
        self.model, self.tokenizer, self.answering = loaded.model, loaded.tokenizer, answering
        self.fingerprint = {"kind": "model", "path": str(spec), "weights": weights_digest(loaded.model)}
        self.generator = torch.Generator().manual_seed(answering.seed)

    def prompt_ids(self, prompt: str) -> list[int]:
        room = self.model.config.max_seq_len - self.answering.max_tokens
        return [document_prefix_id(self.tokenizer), *self.tokenizer.encode(prompt)][-max(room, 1):]

    def generate(self, prompt_ids: list[int], temperature: float) -> tuple[str, Finish]:
        pieces, finish = [], None
        for event in complete_text(self.model, self.tokenizer, prompt_ids, self.answering.max_tokens,
                                   temperature=temperature, stop=self.answering.stop, generator=self.generator):
            if isinstance(event, Piece):
                pieces.append(event.text)
            else:
                finish = event
        assert finish is not None
        return "".join(pieces), finish

    def answer(self, prompt: str) -> LocalAnswer:
        started = time.perf_counter()
        ids = self.prompt_ids(prompt)
        text, finish = self.generate(ids, temperature=0.0)
        logprobs = np.array([s.logprob for s in finish.steps])
        signals = {"mean_logprob": float(logprobs.mean()), "min_logprob": float(logprobs.min()),
                   "mean_entropy": float(np.mean([s.entropy for s in finish.steps]))}
        if self.answering.samples:
            sampled = [self.generate(ids, temperature=1.0)[0] for _ in range(self.answering.samples)]
            signals["agreement"] = float(np.mean([s.strip() == text.strip() for s in sampled]))
        return LocalAnswer(text, signals, time.perf_counter() - started)


class Cloud(Protocol):
    fingerprint: dict[str, str]

    def answer(self, prompt: str, fallback: str) -> CloudAnswer: ...


class CloudEndpoint:
    """Any OpenAI-compatible server (``/v1/completions``, temperature 0). Checked once when opened: a server that
    does not answer or refuses the key is one clear error; later failures fall back to the local answer."""

    def __init__(self, base_url: str, api_key: str | None, model: str | None, answering: Answering,
                 timeout_s: float):
        import openai

        self.errors = (openai.APIConnectionError, openai.APIStatusError)  # timeouts are connection errors
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or "none", timeout=timeout_s, max_retries=0)
        try:
            served = [m.id for m in self.client.models.list()]
        except openai.AuthenticationError:
            raise UserError(f"cloud {base_url} refused the API key (401): give the right one with cloud_key=") from None
        except openai.APIConnectionError as e:
            raise UserError(f"cloud {base_url} does not answer ({type(e).__name__}: {e}): is the server "
                            "running, and is the URL its /v1 base?") from None
        except openai.APIStatusError as e:
            raise UserError(f"cloud {base_url}: listing its models failed with HTTP {e.status_code}") from None
        if model is not None and model not in served:
            raise UserError(f"cloud {base_url} has no model {model!r}; it serves {', '.join(served)}")
        if model is None and not served:
            raise UserError(f"cloud {base_url} lists no models: name one with cloud_model=")
        self.model, self.answering = model or served[0], answering
        self.fingerprint = {"kind": "url", "base_url": base_url, "model": self.model}

    def answer(self, prompt: str, fallback: str) -> CloudAnswer:
        started = time.perf_counter()
        try:
            reply = self.client.completions.create(model=self.model, prompt=prompt, temperature=0,
                                                   max_tokens=self.answering.max_tokens, stop=self.answering.stop)
        except self.errors:
            return CloudAnswer(fallback, 0, time.perf_counter() - started, failed=True)
        tokens = reply.usage.total_tokens if reply.usage else 0
        return CloudAnswer(reply.choices[0].text, tokens, time.perf_counter() - started, failed=False)


class CloudModel:
    """A larger model on this machine standing in for the cloud (tokens counted as the server would bill them)."""

    def __init__(self, spec: str, answering: Answering):
        self.inner = LocalModel(spec, Answering(answering.max_tokens, answering.stop))
        self.fingerprint = self.inner.fingerprint

    def answer(self, prompt: str, fallback: str) -> CloudAnswer:
        started = time.perf_counter()
        ids = self.inner.prompt_ids(prompt)
        text, finish = self.inner.generate(ids, temperature=0.0)
        return CloudAnswer(text, len(ids) + len(finish.steps), time.perf_counter() - started, failed=False)


def open_cloud(spec: str, api_key: str | None, model: str | None, answering: Answering, timeout_s: float) -> Cloud:
    if spec.startswith(("http://", "https://")):
        return CloudEndpoint(spec, api_key, model, answering, timeout_s)
    return CloudModel(spec, answering)


# ----------------------------------------------------------------------------------------------------- outcomes
@dataclass
class Outcome:
    """Both answers to one example, as logged for fitting, calibrating and evaluating a router."""

    local: LocalAnswer
    cloud: CloudAnswer
    local_correct: bool
    cloud_correct: bool


def collect_outcomes(examples: Sequence[Example], local: LocalModel, cloud: Cloud) -> list[Outcome]:
    outcomes = []
    for example in examples:
        mine = local.answer(example.prompt)
        theirs = cloud.answer(example.prompt, fallback=mine.text)
        outcomes.append(Outcome(mine, theirs, is_correct(mine.text, example.answer),
                                is_correct(theirs.text, example.answer)))
    return outcomes


def prompt_embeddings(prompts: Sequence[str]) -> np.ndarray:
    """MiniLM sentence embeddings (the offline model the embedding quality filter uses)."""
    from slmtrain.data.filters.embedding_quality import embed

    return embed(_embedder(), prompts)


@functools.cache
def _embedder():  # noqa: ANN202 - a SentenceTransformer, loaded once per process (seconds)
    from slmtrain.data.filters.embedding_quality import load_embedder

    return load_embedder()


# ------------------------------------------------------------------------------------------------------- router
@dataclass
class Router:
    """Logistic regression from confidence signals (and the prompt embedding) to P(local answer is right), with the
    calibrated threshold and the model pair it belongs to. Stored as plain JSON: loading runs no code."""

    pair: dict[str, dict[str, str]]  # {"local": fingerprint, "cloud": fingerprint}
    answering: Answering
    signals: list[str]
    embedding: bool
    mean: list[float]
    scale: list[float]
    weights: list[float]
    bias: float
    calibration: Calibration | None = None

    @classmethod
    def fit(cls, outcomes: Sequence[Outcome], embeddings: np.ndarray | None, pair: dict[str, dict[str, str]],
            answering: Answering) -> Router:
        from sklearn.linear_model import LogisticRegression

        labels = np.array([o.local_correct for o in outcomes])
        if labels.all() or not labels.any():
            raise UserError(f"the local model is {'right' if labels.all() else 'wrong'} on all {len(labels)} fit "
                            "examples: there is nothing for a router to learn (route everything "
                            f"{'locally' if labels.all() else 'to the cloud'})")
        signals = [s for s in (*SIGNALS, "agreement") if s in outcomes[0].local.signals]
        x = _features(outcomes, signals, embeddings)
        mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-8
        fitted = LogisticRegression(C=1.0, max_iter=2000).fit((x - mean) / scale, labels)
        return cls(pair, answering, signals, embeddings is not None, mean.tolist(), scale.tolist(),
                   fitted.coef_[0].tolist(), float(fitted.intercept_[0]))

    def scores(self, outcomes: Sequence[Outcome], embeddings: np.ndarray | None) -> np.ndarray:
        x = (_features(outcomes, self.signals, embeddings) - np.array(self.mean)) / np.array(self.scale)
        return 1.0 / (1.0 + np.exp(-(x @ np.array(self.weights) + self.bias)))

    def check_pair(self, local: dict[str, str], cloud: dict[str, str], path: Path) -> None:
        for role, given in (("local", local), ("cloud", cloud)):
            recorded = self.pair[role]
            same = all(given.get(k) == v for k, v in recorded.items() if k != "path")
            if not same:
                raise UserError(f"{path} was calibrated for the {role} model {_describe(recorded)}, not "
                                f"{_describe(given)}: a router does not transfer to another model pair; recalibrate")

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> Router:
        if not path.is_file():
            raise UserError(f"router file not found: {path}")
        try:
            data = json.loads(path.read_text())
            data["answering"] = Answering(**data["answering"])
            data["calibration"] = Calibration(**data["calibration"])
            return cls(**data)
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise UserError(f"{path}: not a router file written by route.py calibrate ({type(e).__name__}: {e})") from None


def _features(outcomes: Sequence[Outcome], signals: Sequence[str], embeddings: np.ndarray | None) -> np.ndarray:
    x = np.array([[o.local.signals[s] for s in signals] for o in outcomes], dtype=np.float64)
    return x if embeddings is None else np.concatenate([x, embeddings.astype(np.float64)], axis=1)


def _describe(fingerprint: dict[str, Any]) -> str:
    if fingerprint.get("kind") == "url":
        return f"{fingerprint['model']!r} at {fingerprint['base_url']}"
    return f"{fingerprint.get('path')} (weights {fingerprint.get('weights')})"
