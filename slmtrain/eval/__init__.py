"""Evaluation: what a model can do and what it costs to run.

perplexity  perplexity and bits per byte on held-out shards, text files or strings
tasks       the one task registry: item kinds, few-shot prompts, task files; benchmarks (lm-eval prompts over the
            installed benchmark data), benchmark_data (reading it), deploy_tasks, passkey register into it
scoring     log-likelihoods with shared contexts, greedy generation, a task's metrics
suites      suites by task family, the CORE score, the evaluation report
harness     an lm-evaluation-harness ``LM`` over slmtrain models, for any harness task, offline from local data
runtime     llama-bench style prefill/decode speed, TTFT, memory, energy, and the roofline prediction
quantize    int8 / int8-dynamic / int4 linear layers and the perplexity they cost
report      tables, a CSV every run appends to, runtime plots

Functions take a :class:`slmtrain.model.transformer.Transformer` and, where text is involved, a tokenizer with the
:class:`slmtrain.artifacts.TextTokenizer` interface; ``load_model`` returns both for presets, HF dirs and runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from slmtrain.config import UserError

if TYPE_CHECKING:
    from slmtrain.artifacts import TextTokenizer

__all__ = ["TextTokenizer", "document_prefix", "document_prefix_id"]


def __getattr__(name: str) -> Any:
    """TextTokenizer on first use: task names are checked before any command imports torch (through artifacts)."""
    if name == "TextTokenizer":
        from slmtrain.artifacts import TextTokenizer

        return TextTokenizer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def document_prefix_id(tokenizer: TextTokenizer) -> int:
    """The token every scored text is conditioned on, as lm-evaluation-harness does: BOS, else EOS (the document
    separator a model trained on EOS-joined documents has seen before every document)."""
    for token in (tokenizer.bos_id, tokenizer.eos_id):
        if token is not None and token >= 0:
            return int(token)
    raise UserError("the tokenizer has neither a BOS nor an EOS token to condition the first token on")


def document_prefix(tokenizer: TextTokenizer) -> list[int]:
    """[BOS], else [EOS], else [] for a tokenizer with neither: then a text's first token is conditioned on nothing
    (it is context, never scored) and only an empty context cannot be scored."""
    return [int(t) for t in (tokenizer.bos_id, tokenizer.eos_id) if t is not None and t >= 0][:1]
