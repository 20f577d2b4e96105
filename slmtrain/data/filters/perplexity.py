"""Perplexity band filter, CCNet style: score each document with a small causal LM, keep a perplexity band.

The model is a local Hugging Face directory (safetensors weights, never ``trust_remote_code``); an slmtrain run
directory is accepted through its ``hf/`` export. Too low a perplexity flags boilerplate and repeated text, too
high flags noise; the band is ``[min_perplexity, max_perplexity]``.
"""

from __future__ import annotations

import math
from pathlib import Path

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter

from slmtrain.config import UserError


def resolve_model_dir(model: str | Path) -> Path:
    """A directory with config.json: the path itself, or the ``hf/`` export of an slmtrain run directory."""
    path = Path(model)
    for candidate in (path, path / "hf"):
        if (candidate / "config.json").is_file():
            return candidate
    raise UserError(f"no Hugging Face model (config.json) in {path} or {path / 'hf'}")


class PerplexityFilter(BaseFilter):
    """Keep documents whose perplexity over their first ``max_tokens`` tokens lies in the band."""

    name = "📉 Perplexity band"

    def __init__(self, model: str | Path, min_perplexity: float = 0.0, max_perplexity: float = 1_000.0,
                 max_tokens: int = 512, batch_size: int = 8, exclusion_writer: DiskWriter | None = None):
        super().__init__(exclusion_writer, batch_size=batch_size)
        self.model_dir = resolve_model_dir(model)
        self.min_perplexity = min_perplexity
        self.max_perplexity = max_perplexity
        self.max_tokens = max_tokens
        self._model = None

    def _load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        self._model = AutoModelForCausalLM.from_pretrained(
            self.model_dir, local_files_only=True, use_safetensors=True, trust_remote_code=False
        ).eval()

    def perplexities(self, texts: list[str]) -> list[float]:
        import torch

        if self._model is None:
            self._load()
        # no padding token needed: each document is scored on its own row of a ragged batch, padded with 0s
        rows = [self._tokenizer(t, truncation=True, max_length=self.max_tokens)["input_ids"] for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        with torch.inference_mode():
            logits = self._model(input_ids=ids, attention_mask=mask).logits.float()
        losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
        counted = mask[:, 1:].float()
        mean_loss = (losses * counted).sum(1) / counted.sum(1).clamp(min=1)
        return [math.exp(min(x, 50.0)) if n > 0 else math.inf for x, n in zip(mean_loss.tolist(), counted.sum(1))]

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return self.filter_batch([doc])[0]

    def filter_batch(self, batch: list[Document]) -> list[bool | tuple[bool, str]]:
        results: list[bool | tuple[bool, str]] = []
        for doc, perplexity in zip(batch, self.perplexities([doc.text for doc in batch])):
            doc.metadata["perplexity"] = round(perplexity, 3)
            if perplexity < self.min_perplexity:
                results.append((False, "perplexity_too_low"))
            elif perplexity > self.max_perplexity:
                results.append((False, "perplexity_too_high"))
            else:
                results.append(True)
        return results
