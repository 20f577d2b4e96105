"""fastText quality classifier, DCLM style: word-bigram fastText trained on positives vs negatives.

``train_fasttext_classifier`` trains it (bounded size: ``dim`` x ``bucket`` hashed n-gram rows) and reports
precision/recall on a held-out split; ``FastTextQualityFilter`` keeps documents whose P(positive) is above a
threshold, or the top fraction of documents (threshold calibrated on each task's first documents, streaming).
"""

from __future__ import annotations

import gzip
import itertools
import multiprocessing
import os
import random
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import orjson
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter

from slmtrain.config import ConfigError, UserError

POSITIVE, NEGATIVE = "__label__hq", "__label__lq"
MAX_CLASSIFIED_CHARS = 20_000  # the start of a document decides; keeps scoring time per document bounded
MAX_FASTTEXT_WORDS = 1_000


def resolve_inputs(specs: Sequence[str | Path]) -> list[Path]:
    """Files, folders (their ``*.jsonl*`` files) or glob patterns, as a sorted list of existing files."""
    paths: list[Path] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            paths += sorted(path.rglob("*.jsonl*"))
        elif path.is_file():
            paths.append(path)
        else:
            anchor = Path(path.anchor or ".")
            paths += sorted(p for p in anchor.glob(str(path.relative_to(anchor))) if p.is_file())
    if not paths:
        raise UserError(f"no input files found for {', '.join(map(str, specs))}")
    return paths


def jsonl_records(paths: Sequence[Path]) -> Iterator[dict]:
    """Records of JSONL files (plain or .gz); undecodable lines are skipped and counted by the caller's check."""
    for path in paths:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            for line in f:
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(record, dict):
                    yield record


def fasttext_text(text: str) -> str:
    """One line of whitespace-separated words, as fastText reads it.

    fastText cuts lines at 1024 words and reads the rest as a new, unlabelled example (which makes its loss NaN).
    """
    return " ".join(text[:MAX_CLASSIFIED_CHARS].split()[:MAX_FASTTEXT_WORDS])


def train_fasttext_classifier(
    positives: Sequence[str | Path],
    negatives: Sequence[str | Path],
    out: Path,
    held_out: float = 0.1,
    max_examples: int = 50_000,
    min_positive_words: int = 0,
    dim: int = 32,
    bucket: int = 100_000,
    epoch: int = 5,
    word_ngrams: int = 2,
    seed: int = 0,
) -> dict:
    """Train, evaluate on a held-out split, save to ``out``; return the metrics (precision/recall of positives)."""
    started = time.perf_counter()
    rng = random.Random(seed)
    evaluation, training = [], []
    for label, specs, min_words in ((POSITIVE, positives, min_positive_words), (NEGATIVE, negatives, 0)):
        examples = _labelled(specs, label, max_examples, min_words)
        if len(examples) < 2:
            raise UserError(f"fastText training needs >= 2 {label.removeprefix('__label__')} examples, "
                            f"found {len(examples)} in {', '.join(map(str, specs))}")
        rng.shuffle(examples)
        n_held_out = max(1, int(len(examples) * held_out))  # per class: both labels are always trained on
        evaluation += examples[:n_held_out]
        training += examples[n_held_out:]
    rng.shuffle(training)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf-8") as train_file:
        train_file.writelines(f"{label} {text}\n" for label, text in training)
        train_file.flush()
        settings = {"dim": dim, "bucket": bucket, "epoch": epoch, "wordNgrams": word_ngrams, "seed": seed}
        # A fresh process per training: the fastText wheel reports a spurious NaN when trained twice in one process.
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            error = pool.submit(_fit, train_file.name, str(out), settings).result()
    if error:
        raise UserError(f"fastText training failed on {len(training)} examples: {error}")
    from fasttext.FastText import _FastText

    model = _FastText(str(out))
    predicted = [model.predict(text)[0][0] for _, text in evaluation]
    metrics = _binary_metrics([label == POSITIVE for label, _ in evaluation], [p == POSITIVE for p in predicted])
    return {**metrics, "train_examples": len(training), "held_out_examples": len(evaluation),
            "model_bytes": out.stat().st_size, "seconds": round(time.perf_counter() - started, 2)}


def _fit(train_path: str, out: str, settings: dict) -> str | None:
    """Train and save (in a child process); return the error message, if any."""
    import fasttext

    partial = f"{out}.partial"  # renamed into place whole: a crash never leaves a model file that looks trained
    try:
        fasttext.train_supervised(input=train_path, thread=1, verbose=0, **settings).save_model(partial)
    except RuntimeError as error:
        return str(error)
    os.replace(partial, out)
    return None


def _labelled(specs: Sequence[str | Path], label: str, limit: int, min_words: int) -> list[tuple[str, str]]:
    examples = []
    for record in jsonl_records(resolve_inputs(specs)):
        text = record.get("text")
        if isinstance(text, str) and (line := fasttext_text(text)) and line.count(" ") + 1 >= min_words:
            examples.append((label, line))
            if len(examples) >= limit:
                break
    return examples


def _binary_metrics(truth: list[bool], predicted: list[bool]) -> dict:
    tp = sum(t and p for t, p in zip(truth, predicted))
    fp = sum(p and not t for t, p in zip(truth, predicted))
    fn = sum(t and not p for t, p in zip(truth, predicted))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    accuracy = sum(t == p for t, p in zip(truth, predicted)) / len(truth)
    return {"precision": round(precision, 4), "recall": round(recall, 4), "accuracy": round(accuracy, 4)}


class FastTextQualityFilter(BaseFilter):
    """Keep documents with P(high quality) >= ``threshold``, or the ``top_fraction`` best scored.

    With ``top_fraction`` the threshold is the matching quantile of the scores of each task's first
    ``calibration_docs`` documents (held in memory, then streamed on): exact top-k needs the whole corpus.
    The score is stored as ``metadata['fasttext_quality']``.
    """

    name = "⭐ fastText quality"

    def __init__(self, model: str | Path, threshold: float | None = None, top_fraction: float | None = None,
                 calibration_docs: int = 2_000, batch_size: int = 256, exclusion_writer: DiskWriter | None = None):
        super().__init__(exclusion_writer, batch_size=batch_size)
        if (threshold is None) == (top_fraction is None):
            raise ConfigError("threshold", "give exactly one of threshold or top_fraction")
        if top_fraction is not None and not 0 < top_fraction <= 1:
            raise ConfigError("top_fraction", f"must be in (0, 1], got {top_fraction}")
        self.model_path = Path(model)
        self.threshold = threshold
        self.top_fraction = top_fraction
        self.calibration_docs = calibration_docs
        self._threshold = threshold  # per task: fixed, or calibrated at the start of run()
        self._calibration_scores: dict[int, float] = {}
        self._model = None

    @property
    def model(self):  # noqa: ANN201 - fasttext's model type is untyped
        if self._model is None:
            if not self.model_path.is_file():
                raise UserError(f"fastText quality model not found: {self.model_path} (train it with "
                                "launch/train_quality.py kind=fasttext)")
            from fasttext.FastText import _FastText

            self._model = _FastText(str(self.model_path))
        return self._model

    def scores(self, docs: list[Document]) -> list[float]:
        """This model's scores, in one fastText call (never a score found in the input's metadata); the scores
        computed for calibration are reused once."""
        cached = [self._calibration_scores.pop(id(doc), None) for doc in docs]
        to_score = [doc for doc, score in zip(docs, cached) if score is None]
        if to_score:
            labels, probabilities = self.model.predict([fasttext_text(doc.text) for doc in to_score], k=2)
            fresh = iter(round(dict(zip(doc_labels, doc_probabilities.tolist())).get(POSITIVE, 0.0), 5)
                         for doc_labels, doc_probabilities in zip(labels, probabilities))
            cached = [next(fresh) if score is None else score for score in cached]
        for doc, score in zip(docs, cached):
            doc.metadata["fasttext_quality"] = score
        return cached

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return self.filter_batch([doc])[0]

    def filter_batch(self, batch: list[Document]) -> list[bool | tuple[bool, str]]:
        return [score >= self._threshold or (False, "low_fasttext_quality") for score in self.scores(batch)]

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        data = iter(data)
        self._threshold = self.threshold
        calibration: list[Document] = []
        if self.top_fraction is not None:
            for doc in data:
                calibration.append(doc)
                if len(calibration) >= self.calibration_docs:
                    break
            scores = self.scores(calibration)
            self._calibration_scores = {id(doc): score for doc, score in zip(calibration, scores)}
            self._threshold = float(np.quantile(scores, 1 - self.top_fraction)) if scores else 1.0
            self.stat_update("calibrated_threshold_x1000", value=int(self._threshold * 1000))
        yield from super().run(itertools.chain(calibration, data), rank, world_size)
