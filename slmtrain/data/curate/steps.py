"""The step registry: each step type a declaration may name, the class its parameters build, and what the stage
builder gives it beyond those parameters (an exclusion writer, the failure limit, a word tokenizer, a model trained
on the spot, a stage of its own).

A step's parameters are checked by name against its class, so a typo is an error naming the valid keys; what the
pipeline injects (``exclusion_writer``, ``failure_limit``) is not the user's to set.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import MinhashConfig
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.pipeline.formatters import PIIFormatter
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.typeshelper import Languages

from slmtrain.config import ConfigError, UserError
from slmtrain.data.filters.embedding_quality import EmbeddingQualityFilter
from slmtrain.data.filters.extractors import ResiliparseExtractor, TrafilaturaExtractor
from slmtrain.data.filters.fasttext_quality import FastTextQualityFilter, train_fasttext_classifier
from slmtrain.data.filters.offline import OfflineLanguageFilter, OfflineURLFilter
from slmtrain.data.filters.perplexity import PerplexityFilter
from slmtrain.data.filters.tokenization import shared_tokenizer

# A step's on-the-spot training: (step name, its `train:` mapping, its other parameters, the run's output) -> the
# preparation to run in the driver before the step's stage starts.
Trainer = Callable[[str, dict, dict, Path], Callable[[], None]]


@dataclass(frozen=True)
class StepKind:
    """A step type: the class its declared parameters build, and what the stage builder does for it beyond that."""

    cls: Callable[..., Any]
    # removes documents through an ``exclusion_writer``: given one writing to removed/<step>/
    exclusion_writer: bool = True
    # extracts text from HTML: runs only on HTML/WARC input (JSONL/Parquet text is already extracted) and is given
    # the run's failure limit (a task whose failures pass it stops at once, not only the run at its end)
    extracts: bool = False
    # a datatrove filter splitting text with its language's word tokenizer: given slmtrain's faster one (same tokens)
    splits_words: bool = False
    # with a ``train:`` mapping, trains the model it loads before its stage runs (see ``fasttext_trainer``)
    trainer: Trainer | None = None
    # MinHash deduplication: ends the stage (the documents kept so far are written and signed), adds the bucket and
    # cluster stages and starts the next stage with the dedup filter; the class builds its MinhashConfig
    ends_stage: bool = False


def fasttext_trainer(name: str, train: dict, params: dict, output: Path) -> Callable[[], None]:
    """Train the step's fastText model before its stage runs, unless the model file exists already.

    ``{output}`` in the training paths stands for the output folder (e.g. negatives = the documents removed by
    the heuristic steps of this very run). A relative ``model`` path is made absolute in ``params``, under output.
    """
    if not isinstance(train, dict) or not {"positives", "negatives"} <= set(train):
        raise ConfigError(f"steps.{name}.train", "expected a mapping with positives: and negatives: paths")
    model = Path(str(params.get("model", "")))
    if not params.get("model"):
        raise ConfigError(f"steps.{name}.model", "a path is required (where the trained model is saved)")
    if not model.is_absolute():
        params["model"] = model = output / model  # a relative model path lives in the run's output
    valid = set(inspect.signature(train_fasttext_classifier).parameters) - {"out"}
    if unknown := set(train) - valid:
        raise ConfigError(f"steps.{name}.train.{sorted(unknown)[0]}", f"unknown key; valid keys: "
                          f"{', '.join(sorted(valid))}")

    def expand(paths: str | list[str]) -> list[str]:
        return [p.replace("{output}", str(output)) for p in ([paths] if isinstance(paths, str) else paths)]

    def prepare() -> None:
        if model.is_file():
            return
        metrics = train_fasttext_classifier(**{**train, "positives": expand(train["positives"]),
                                               "negatives": expand(train["negatives"]), "out": model})
        (output / f"{name}_training.json").write_text(json.dumps(metrics, indent=2))

    return prepare


STEPS: dict[str, StepKind] = {
    "trafilatura": StepKind(TrafilaturaExtractor, extracts=True),
    "resiliparse": StepKind(ResiliparseExtractor, extracts=True),
    "url": StepKind(OfflineURLFilter),
    "language": StepKind(OfflineLanguageFilter),
    "gopher_repetition": StepKind(GopherRepetitionFilter, splits_words=True),
    "gopher_quality": StepKind(GopherQualityFilter, splits_words=True),
    "c4_quality": StepKind(C4QualityFilter, splits_words=True),
    "fineweb_quality": StepKind(FineWebQualityFilter, splits_words=True),
    "fasttext_quality": StepKind(FastTextQualityFilter, trainer=fasttext_trainer),
    "embedding_quality": StepKind(EmbeddingQualityFilter),
    "perplexity": StepKind(PerplexityFilter),
    "pii": StepKind(PIIFormatter, exclusion_writer=False),  # rewrites text, removes nothing
    "minhash": StepKind(MinhashConfig, exclusion_writer=False, ends_stage=True),
}
STEP_TYPES = sorted(STEPS)


def build_step(name: str, kind: StepKind, params: dict, output: Path, failure_limit: float | None) -> PipelineStep:
    """The datatrove step of a declared step: its class with the user's ``params`` and what its kind injects."""
    if kind.splits_words:
        params["language"] = shared_tokenizer(params.get("language", Languages.english))
    injected: dict[str, Any] = {}
    if kind.exclusion_writer:
        injected["exclusion_writer"] = removed_writer(output, name)
    if kind.extracts:
        injected["failure_limit"] = failure_limit
    return construct(name, kind.cls, params, **injected)


def construct(name: str, cls: Callable, params: dict, **injected: Any) -> Any:
    """``cls(**params, **injected)`` with unknown parameters reported by step name, listing the valid ones (the
    pipeline's own arguments, ``injected``, are not the user's to set)."""
    valid = [p for p in inspect.signature(cls).parameters if p not in ("self", "kwargs", *injected)]
    for key in params:
        if key not in valid:
            raise ConfigError(f"steps.{name}.{key}", f"unknown key; valid keys: {', '.join(sorted(valid))}")
    try:
        return cls(**params, **injected)
    except ConfigError as error:
        raise error.under(f"steps.{name}") from None
    except (TypeError, ValueError) as error:
        raise ConfigError(f"steps.{name}", str(error)) from None
    except ImportError as error:  # datatrove's check of the step's declared dependencies
        raise UserError(f"steps.{name}: {str(error).splitlines()[0]}") from None


def removed_writer(output: Path, name: str) -> JsonlWriter:
    """Writer of a step's removed documents; one removed without a finer reason carries the step's name."""

    def with_reason(writer: JsonlWriter, document: Document) -> dict:
        document.metadata.setdefault("filter_reason", name)
        return writer._default_adapter(document)

    return JsonlWriter(str(output / "removed" / name), adapter=with_reason)
